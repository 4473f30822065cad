package testpeer

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

const (
	// startTimeout bounds how long a started peer may take to accept requests.
	startTimeout = 30 * time.Second

	// stopTimeout is how long a peer may take to exit after SIGTERM before it is killed.
	stopTimeout = 5 * time.Second

	// logTailBytes is how much of a peer's log a failed test prints.
	logTailBytes = 8 << 10
)

// process is one running peer binary whose output goes to a log file.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
	waitErr error
}

// startProcess starts binary with args and env added to the test's environment. Its output
// goes to logPath, appended so a restarted peer keeps one log.
func startProcess(t testing.TB, name, logPath, binary string, args []string, env []string) *process {
	t.Helper()

	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("testpeer: %s: open log file: %v", name, err)
	}
	defer logFile.Close()

	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// A test binary killed by `go test -timeout` runs no cleanup, so let the kernel kill the peer.
	// NOTE: Linux sends the signal when the thread that started the peer exits, which in Go
	// happens only for a goroutine that exits while locked to its thread.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("testpeer: %s: start %s: %v", name, binary, err)
	}

	p := &process{name: name, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	return p
}

// stop sends SIGTERM, waits up to stopTimeout, then kills the process.
func (p *process) stop() {
	select {
	case <-p.exited:
		return
	default:
	}

	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(stopTimeout):
		p.cmd.Process.Kill()
		<-p.exited
	}
}

// logTail returns the last logTailBytes of the process log.
func (p *process) logTail() string {
	return fileTail(p.logPath, logTailBytes)
}

func fileTail(path string, n int64) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(log %s unreadable: %v)", path, err)
	}
	if int64(len(data)) > n {
		data = data[int64(len(data))-n:]
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			data = data[i+1:]
		}
	}
	return string(data)
}

// waitReady polls ready until it returns nil, the process exits, or startTimeout passes.
func (p *process) waitReady(ctx context.Context, ready func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()

	var lastErr error
	for {
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited before it was ready (%v); log %s:\n%s", p.name, p.waitErr, p.logPath, p.logTail())
		default:
		}

		lastErr = ready(ctx)
		if lastErr == nil {
			return nil
		}

		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %s: %v; log %s:\n%s", p.name, startTimeout, lastErr, p.logPath, p.logTail())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// httpAnswers succeeds when url returns any HTTP response.
func httpAnswers(url string) func(context.Context) error {
	return func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()

		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}
}

// tcpAccepts succeeds when addr accepts a TCP connection.
func tcpAccepts(addr string) func(context.Context) error {
	return func(ctx context.Context) error {
		var dialer net.Dialer
		conn, err := dialer.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		conn.Close()
		return nil
	}
}

// peerDir makes a folder for one peer's files inside the test's temporary folder.
func peerDir(t testing.TB, name string) string {
	t.Helper()

	dir := filepath.Join(t.TempDir(), name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("testpeer: %s: %v", name, err)
	}
	return dir
}
