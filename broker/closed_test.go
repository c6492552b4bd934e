package broker

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"testing"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/packets"
)

func TestCloseReason(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, ""},
		{io.EOF, ""},
		{fmt.Errorf("read connection: %w", io.EOF), ""},
		{net.ErrClosed, ""},
		{packets.ErrServerShuttingDown, ""},
		{packets.ErrBadUsernameOrPassword, ""},
		{fmt.Errorf("read connection: %w", packets.ErrMalformedProtocolName), "malformed"},
		{packets.ErrMalformedVariableByteInteger, "malformed"},
		{packets.ErrProtocolViolationRequireFirstConnect, "protocol_violation"},
		{fmt.Errorf("read connection: %w", packets.ErrPacketTooLarge), "packet_too_large"},
		{websocket.ErrReadLimit, "packet_too_large"},
		{errTextFrame, "text_frame"},
		{fmt.Errorf("read connection: %w", os.ErrDeadlineExceeded), "timeout"},
		{errors.New("something else"), ""},
	} {
		if got := closeReason(tc.err); got != tc.want {
			t.Errorf("closeReason(%v) = %q, want %q", tc.err, got, tc.want)
		}
		if tc.want != "" && !slices.Contains(closeReasonNames, tc.want) {
			t.Errorf("closeReasonNames lacks %q", tc.want) // its log throttle would be missing
		}
	}
}
