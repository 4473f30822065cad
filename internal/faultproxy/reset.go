package faultproxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

const (
	// upstreamIOTimeout bounds each step of a reset request on the upstream connection.
	upstreamIOTimeout = 30 * time.Second

	// drainTimeout bounds how long serveReset waits for the upstream to finish the cut
	// request before it resets the client.
	drainTimeout = 10 * time.Second
)

// hopHeaders are connection-level headers that a proxy must not forward.
var hopHeaders = []string{
	"Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade", "Content-Length", "Expect",
}

// serveReset forwards r on a new upstream connection but sends only the first bodyBytes
// bytes of its body, then closes the sending side so the upstream sees the body end early.
// It waits for the upstream to finish the request, so the upstream state is settled when the
// client sees the failure, and then resets the client connection.
//
// It writes straight to the socket, not through http.Transport, because the transport buffers
// a few KiB that it drops when the body fails, and then the upstream would hold an unknown
// number of bytes below bodyBytes.
func (p *Proxy) serveReset(w http.ResponseWriter, r *http.Request, bodyBytes int64) {
	defer resetConnection(w)

	conn, err := net.DialTimeout("tcp", p.upstream.Host, upstreamIOTimeout)
	if err != nil {
		return
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(upstreamIOTimeout))

	chunked := r.ContentLength < 0
	if err := p.writeRequestHead(conn, r, chunked); err != nil {
		return
	}
	complete, err := copyBodyPrefix(conn, r.Body, bodyBytes, chunked)
	if err != nil {
		return
	}

	if !complete {
		if tcp, ok := conn.(*net.TCPConn); ok {
			tcp.CloseWrite()
		}
	}
	// Read until the upstream closes, which it does after its handler for the cut request has
	// returned, so the upload session holds every byte sent.
	conn.SetDeadline(time.Now().Add(drainTimeout))
	io.Copy(io.Discard, conn)
}

// writeRequestHead writes the request line and headers of r for the upstream.
func (p *Proxy) writeRequestHead(conn net.Conn, r *http.Request, chunked bool) error {
	header := r.Header.Clone()
	for _, name := range hopHeaders {
		header.Del(name)
	}
	header.Set("Connection", "close")
	if chunked {
		header.Set("Transfer-Encoding", "chunked")
	} else {
		header.Set("Content-Length", fmt.Sprint(r.ContentLength))
	}

	head := bufio.NewWriter(conn)
	fmt.Fprintf(head, "%s %s HTTP/1.1\r\nHost: %s\r\n", r.Method, r.URL.RequestURI(), p.upstream.Host)
	if err := header.Write(head); err != nil {
		return err
	}
	head.WriteString("\r\n")
	return head.Flush()
}

// copyBodyPrefix sends at most limit bytes of body to conn, unbuffered, in chunked encoding
// when chunked is set. It returns complete when the whole body fit in limit and was sent,
// with the final chunk when chunked.
func copyBodyPrefix(conn net.Conn, body io.Reader, limit int64, chunked bool) (complete bool, err error) {
	buf := make([]byte, 32<<10)
	remaining := limit
	for {
		if remaining == 0 {
			// The budget is spent. The body is complete only if nothing follows.
			var probe [1]byte
			n, err := body.Read(probe[:])
			if n == 0 && err == io.EOF {
				return true, finishChunks(conn, chunked)
			}
			return false, nil
		}

		size := int64(len(buf))
		if size > remaining {
			size = remaining
		}
		n, readErr := body.Read(buf[:size])
		if n > 0 {
			if err := writeBodyPart(conn, buf[:n], chunked); err != nil {
				return false, err
			}
			remaining -= int64(n)
		}
		if readErr == io.EOF {
			return true, finishChunks(conn, chunked)
		}
		if readErr != nil {
			return false, nil
		}
	}
}

func writeBodyPart(conn net.Conn, data []byte, chunked bool) error {
	if chunked {
		if _, err := fmt.Fprintf(conn, "%x\r\n", len(data)); err != nil {
			return err
		}
	}
	if _, err := conn.Write(data); err != nil {
		return err
	}
	if chunked {
		_, err := io.WriteString(conn, "\r\n")
		return err
	}
	return nil
}

func finishChunks(conn net.Conn, chunked bool) error {
	if !chunked {
		return nil
	}
	_, err := io.WriteString(conn, "0\r\n\r\n")
	return err
}

// resetConnection hijacks the client connection and closes it with SO_LINGER 0, which makes
// the kernel send a TCP RST instead of a FIN.
func resetConnection(w http.ResponseWriter) {
	hijacker, ok := w.(http.Hijacker)
	if !ok {
		panic("faultproxy: response writer cannot hijack the connection")
	}
	conn, _, err := hijacker.Hijack()
	if err != nil {
		panic("faultproxy: hijack client connection: " + err.Error())
	}
	if tcp, ok := conn.(*net.TCPConn); ok {
		tcp.SetLinger(0)
	}
	conn.Close()
}
