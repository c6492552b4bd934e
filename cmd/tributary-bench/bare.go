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
	"strings"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// The bare-qos1 scenario sends mqtt-qos1's load (same clients, window,
// payload and topics) to the cheapest endpoint that still speaks the
// protocol: it reads, finds each PUBLISH, and answers all the QoS 1
// publishes of one read with one write of their PUBACKs. No broker, no
// Kafka. Its CPU per record, the endpoint's and the load generator's, is
// what the QoS 1 protocol itself costs on this machine: a floor under any
// broker's QoS 1 cost, which tells how much of Tributary's is the
// protocol's and how much its own. The endpoint runs in a child process
// (this binary, started with the argument bareEndpointArg), so that its
// CPU is counted apart from the harness's.

// bareEndpointArg, as the first argument, makes the binary the endpoint:
// it listens on a loopback port, prints the address on a line of its own,
// and serves until its standard input closes.
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
	go serveBare(l, func(err error) { fmt.Fprintf(stderr, "bare endpoint: %v\n", err) })
	_, _ = io.Copy(io.Discard, stdin) // the harness is done, or gone
	l.Close()
	return 0
}

// serveBare serves l until it is closed, telling fail about every
// connection that ended with a protocol error.
func serveBare(l net.Listener, fail func(error)) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			if err := serveBareConn(c); err != nil {
				fail(fmt.Errorf("%s: %w", c.RemoteAddr(), err))
			}
		}()
	}
}

// serveBareConn answers one client until it sends DISCONNECT (nil) or
// the connection fails or breaks the protocol (an error).
func serveBareConn(c net.Conn) error {
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
	e := &bareEndpoint{cmd: cmd, stdin: stdin}
	lines := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		lines <- strings.TrimSpace(line)
	}()
	select {
	case e.addr = <-lines:
	case <-time.After(10 * time.Second):
	}
	if _, _, err := net.SplitHostPort(e.addr); err != nil {
		e.stop()
		return nil, fmt.Errorf("the bare endpoint gave no address (%q)", e.addr)
	}
	return e, nil
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

// runBare sends s's load to a fresh bare endpoint. Every PUBACK the
// publishers received answers one publish the endpoint read, so they are
// the count.
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
	cpu0, cpuErr := processCPU(e.cmd.Process.Pid)
	start, sendErr := l.fire(&r)
	end := time.Now()
	if cpu1, err := processCPU(e.cmd.Process.Pid); err == nil && cpuErr == nil {
		r.CPU = ptr(centi(cpu1 - cpu0))
	}
	lat := l.latencies()
	r.settle(start, end, int64(len(lat)), sendErr, "the publishers received PUBACKs for")
	r.setLatencies(lat)
	return r
}
