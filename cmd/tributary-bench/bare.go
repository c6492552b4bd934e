package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// The bare-qos1 scenario sends mqtt-qos1's load (same clients, client
// ids, window, payload and topics) to the cheapest endpoint that still
// speaks the protocol: it reads, finds each PUBLISH, counts it, and
// answers all the QoS 1 publishes of one read with one write of their
// PUBACKs. No broker, no Kafka. Its CPU per record, the endpoint's and
// the load generator's, is what the QoS 1 protocol itself costs on this
// machine: a floor under any broker's QoS 1 cost, which tells how much of
// Tributary's is the protocol's and how much its own. bare-qos0 does the
// same with mqtt-qos0's load: the cost of writing and reading the
// publishes alone, which mqtt-qos0's CPU per record already includes, so
// that bare-qos1's less bare-qos0's is what QoS 1 adds. The endpoint runs
// in a child process (this binary, started with the argument
// bareEndpointArg), so that its CPU is counted apart from the harness's.

// bareEndpointArg, as the first argument, makes the binary the endpoint:
// it listens on a loopback port, prints the address on a line of its own,
// and serves until its standard input closes. Each line it reads from its
// standard input asks how many publishes it has read so far, which it
// answers with the number on a line of its own: a QoS 0 publisher gets
// no answer to count.
const bareEndpointArg = "bare-endpoint"

// maxBarePacket is the largest packet the endpoint takes; the bench's
// publishes are far smaller.
const maxBarePacket = ioBufferBytes / 2

// bareEndpointMain is the endpoint's main: it returns an exit code.
func bareEndpointMain(stdin io.Reader, stdout, stderr io.Writer) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintf(stderr, "bare endpoint: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, l.Addr().String())
	var received atomic.Int64
	go serveBare(l, &received, func(err error) { fmt.Fprintf(stderr, "bare endpoint: %v\n", err) })
	in := bufio.NewScanner(stdin)
	for in.Scan() {
		fmt.Fprintln(stdout, received.Load())
	}
	// The harness is done, or gone.
	l.Close()
	return 0
}

// serveBare serves l until it is closed, adding every publish it reads to
// received and telling fail about every connection that ended with a
// protocol error.
func serveBare(l net.Listener, received *atomic.Int64, fail func(error)) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			if err := serveBareConn(c, received); err != nil {
				fail(fmt.Errorf("%s: %w", c.RemoteAddr(), err))
			}
		}()
	}
}

// serveBareConn answers one client until it sends DISCONNECT (nil) or
// the connection fails or breaks the protocol (an error), adding the
// publishes it reads to received, once per read, and always before it
// answers them or closes the connection: a publisher that has its
// PUBACKs, or has seen the connection closed after its DISCONNECT, finds
// all its publishes counted.
func serveBareConn(c net.Conn, received *atomic.Int64) error {
	buf := make([]byte, ioBufferBytes)
	var out []byte
	have := 0
	for {
		n, err := c.Read(buf[have:])
		if err != nil {
			if errors.Is(err, io.EOF) {
				return errors.New("closed without DISCONNECT")
			}
			return err
		}
		have += n
		used, done, perr := 0, false, error(nil)
		publishes := int64(0)
		out = out[:0]
		for !done && perr == nil {
			var typ byte
			var body []byte
			var size int
			typ, body, size, perr = nextBarePacket(buf[used:have])
			if perr != nil || size == 0 {
				break
			}
			used += size
			out, done, perr = answerBare(out, typ, body)
			if perr == nil && typ>>4 == packets.Publish {
				publishes++
			}
		}
		if publishes > 0 {
			received.Add(publishes)
		}
		if len(out) > 0 {
			if _, err := c.Write(out); err != nil {
				return err
			}
		}
		if perr != nil || done {
			return perr
		}
		have = copy(buf, buf[used:have])
	}
}

// nextBarePacket finds the first whole packet in b: its first byte, its
// body and its size on the wire. size is 0 when b holds no whole packet
// yet.
func nextBarePacket(b []byte) (typ byte, body []byte, size int, err error) {
	if len(b) < 2 {
		return 0, nil, 0, nil
	}
	length, mul := 0, 1
	for i := 1; i < len(b); i++ {
		if i > 4 {
			return 0, nil, 0, errors.New("remaining length longer than 4 bytes")
		}
		length += int(b[i]&0x7f) * mul
		mul <<= 7
		if b[i]&0x80 != 0 {
			continue
		}
		if length > maxBarePacket {
			return 0, nil, 0, fmt.Errorf("packet of %d bytes, more than the %d the bare endpoint takes", length, maxBarePacket)
		}
		if len(b) < i+1+length {
			return 0, nil, 0, nil
		}
		return b[0], b[i+1 : i+1+length], i + 1 + length, nil
	}
	return 0, nil, 0, nil
}

// answerBare appends the answer to one packet to out; done is true after
// DISCONNECT.
func answerBare(out []byte, typ byte, body []byte) ([]byte, bool, error) {
	switch typ >> 4 {
	case packets.Connect:
		return append(out, packets.Connack<<4, 2, 0, 0), false, nil
	case packets.Publish:
		switch qos := (typ >> 1) & 3; qos {
		case 0:
			return out, false, nil
		case 1:
			if len(body) < 2 {
				return out, false, errors.New("PUBLISH without a topic length")
			}
			at := 2 + (int(body[0])<<8 | int(body[1]))
			if len(body) < at+2 {
				return out, false, errors.New("PUBLISH too short for its topic and packet id")
			}
			return append(out, packets.Puback<<4, 2, body[at], body[at+1]), false, nil
		default:
			return out, false, fmt.Errorf("PUBLISH at QoS %d: the bare endpoint takes QoS 0 and 1", qos)
		}
	case packets.Pingreq:
		return append(out, packets.Pingresp<<4, 0), false, nil
	case packets.Disconnect:
		return out, true, nil
	}
	return out, false, fmt.Errorf("unexpected packet type %d", typ>>4)
}

// bareEndpoint is the endpoint's process, seen from the harness.
type bareEndpoint struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader // its standard output
	addr  string
}

// startBareEndpoint starts this binary as the endpoint and waits for its
// address.
func startBareEndpoint(ctx context.Context) (*bareEndpoint, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("finding the harness binary for the bare endpoint: %w", err)
	}
	cmd := exec.CommandContext(ctx, self, bareEndpointArg)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the bare endpoint: %w", err)
	}
	e := &bareEndpoint{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	e.addr, _ = e.line()
	if _, _, err := net.SplitHostPort(e.addr); err != nil {
		e.stop()
		return nil, fmt.Errorf("the bare endpoint gave no address (%q)", e.addr)
	}
	return e, nil
}

// line reads the endpoint's next line of output, giving up after 10 s.
// After an error the endpoint is to be stopped, not read again: the read
// that timed out may still be waiting.
func (e *bareEndpoint) line() (string, error) {
	type read struct {
		line string
		err  error
	}
	lines := make(chan read, 1)
	go func() {
		line, err := e.out.ReadString('\n')
		lines <- read{strings.TrimSpace(line), err}
	}()
	select {
	case l := <-lines:
		return l.line, l.err
	case <-time.After(10 * time.Second):
		return "", errors.New("no answer within 10 s")
	}
}

// received asks the endpoint how many publishes it has read.
func (e *bareEndpoint) received() (int64, error) {
	if _, err := io.WriteString(e.stdin, "count\n"); err != nil {
		return 0, fmt.Errorf("asking the bare endpoint for its count: %w", err)
	}
	line, err := e.line()
	if err != nil {
		return 0, fmt.Errorf("reading the bare endpoint's count: %w", err)
	}
	n, err := strconv.ParseInt(line, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("the bare endpoint's count: %w", err)
	}
	return n, nil
}

// stop closes the endpoint's standard input, which ends it, and waits.
func (e *bareEndpoint) stop() {
	e.stdin.Close()
	done := make(chan struct{})
	go func() { _ = e.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = e.cmd.Process.Kill()
		<-done
	}
}

// runBare sends s's load to a fresh bare endpoint. At QoS 1 every PUBACK
// the publishers received answers one publish the endpoint read, so they
// are the count. At QoS 0 the count is the endpoint's own: each publisher
// is done once the endpoint closed its connection after its DISCONNECT,
// by when every publish before it was read and counted.
func (b *bench) runBare(ctx context.Context, s scenario) result {
	r := result{Scenario: s.name, Records: b.opts.records}
	e, err := startBareEndpoint(ctx)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer e.stop()
	l, done, err := b.dialLoad(ctx, mqttDial{}, e.addr, s, "")
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer done()
	span := b.startCPU(func() (float64, error) { return processCPU(e.cmd.Process.Pid) })
	start, sendErr := l.fire(&r)
	end := time.Now()
	span.end(&r)
	lat := l.latencies()
	found, where := int64(len(lat)), "the publishers received PUBACKs for"
	if s.qos == 0 {
		var err error
		found, err = e.received()
		where = "the endpoint read"
		sendErr = errors.Join(sendErr, err)
	}
	r.settle(start, end, found, sendErr, where)
	r.setLatencies(lat)
	return r
}
