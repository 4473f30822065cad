package benchkit

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"
)

// Server is a peer process (a registry, bazel-remote or img bes) started by a benchmark.
type Server struct {
	name   string
	cmd    *exec.Cmd
	log    string
	exited chan struct{}
}

// StartServer starts binary with args and the extra environment env, its output appended
// to log, and waits until ready returns nil. It stops the server and fails after 30
// seconds.
func StartServer(name, log, binary string, args, env []string, ready func() error) (*Server, error) {
	logFile, err := os.OpenFile(log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()

	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// Kill the server when the benchmark dies without stopping it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	s := &Server{name: name, cmd: cmd, log: log, exited: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(s.exited)
	}()

	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-s.exited:
			return nil, fmt.Errorf("%s exited before it was ready; log %s:\n%s", name, log, FileTail(log, 2000))
		default:
		}
		if err := ready(); err == nil {
			return s, nil
		} else if time.Now().After(deadline) {
			s.Stop()
			return nil, fmt.Errorf("%s not ready after 30s: %w", name, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// PID returns the process id of the server.
func (s *Server) PID() int {
	return s.cmd.Process.Pid
}

// Stop sends SIGTERM and kills the server if it has not exited after 5 seconds.
func (s *Server) Stop() {
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
	}
}

// FreePort returns a port that was free on 127.0.0.1 a moment ago.
func FreePort() (int, error) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer listener.Close()
	return listener.Addr().(*net.TCPAddr).Port, nil
}

// FreeAddr returns 127.0.0.1:PORT with a port from FreePort.
func FreeAddr() (string, error) {
	port, err := FreePort()
	if err != nil {
		return "", err
	}
	return "127.0.0.1:" + strconv.Itoa(port), nil
}

// RetryPorts calls start up to 3 times and returns its first success, because another
// process may take a port between FreePort and the server's bind.
func RetryPorts[T any](start func() (T, error)) (T, error) {
	var lastErr error
	for range 3 {
		value, err := start()
		if err == nil {
			return value, nil
		}
		lastErr = err
	}
	var zero T
	return zero, lastErr
}

// HTTPAnswers returns a readiness check that passes once a GET of url returns a status
// below 500.
func HTTPAnswers(url string) func() error {
	return func() error {
		resp, err := http.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode >= 500 {
			return fmt.Errorf("GET %s: HTTP %d", url, resp.StatusCode)
		}
		return nil
	}
}

// TCPAccepts returns a readiness check that passes once addr accepts a TCP connection.
func TCPAccepts(addr string) func() error {
	return func() error {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		return conn.Close()
	}
}
