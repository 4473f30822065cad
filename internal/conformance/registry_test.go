package conformance

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rulesimg/img/internal/testpeer"
)

var (
	buildOnce   sync.Once
	builtImg    string
	buildErr    error
	buildOutput []byte
)

// imgBinary builds cmd/img once per test binary and returns its path.
func imgBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "img-conformance-")
		if err != nil {
			buildErr = err
			return
		}
		builtImg = filepath.Join(dir, "img")
		cmd := exec.Command("go", "build", "-o", builtImg, "./cmd/img")
		cmd.Dir = testpeer.RepoRoot(t)
		buildOutput, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("go build ./cmd/img failed: %v\n%s", buildErr, buildOutput)
	}
	return builtImg
}

// registryProcess is `img registry` running as a child process on 127.0.0.1.
type registryProcess struct {
	t       *testing.T
	binary  string
	dataDir string
	args    []string
	logPath string

	port int
	cmd  *exec.Cmd
	done chan struct{}
}

// startImgRegistry starts `img registry` on a free port with extra args, and stops it when the
// test ends.
func startImgRegistry(t *testing.T, dataDir string, args ...string) *registryProcess {
	t.Helper()
	p := &registryProcess{
		t:       t,
		binary:  imgBinary(t),
		dataDir: dataDir,
		args:    args,
		logPath: filepath.Join(t.TempDir(), "registry.log"),
	}
	p.start()
	t.Cleanup(p.stop)
	return p
}

func (p *registryProcess) url() string { return "http://" + p.host() }

func (p *registryProcess) host() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port)) }

// start runs the registry on a new free port and waits for /healthz.
func (p *registryProcess) start() {
	p.t.Helper()
	p.port = testpeer.FreePort(p.t)
	args := append([]string{"registry", "--address", "127.0.0.1", "--port", strconv.Itoa(p.port), "--data-dir", p.dataDir}, p.args...)

	logFile, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	defer logFile.Close()
	p.cmd = exec.Command(p.binary, args...)
	p.cmd.Stdout = logFile
	p.cmd.Stderr = logFile
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		p.t.Fatalf("start img registry: %v", err)
	}
	p.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) {
		cmd.Wait()
		close(done)
	}(p.cmd, p.done)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		resp, err := http.Get(p.url() + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-p.done:
			p.t.Fatalf("img registry exited during startup\n%s", p.logTail())
		case <-ctx.Done():
			p.t.Fatalf("img registry did not answer /healthz within 30s\n%s", p.logTail())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// kill ends the registry with SIGKILL, as a crash would.
func (p *registryProcess) kill() {
	p.cmd.Process.Kill()
	<-p.done
}

// stop sends SIGTERM and waits up to 10 seconds for a graceful exit.
func (p *registryProcess) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
	if p.t.Failed() {
		p.t.Logf("img registry log:\n%s", p.logTail())
	}
}

func (p *registryProcess) logTail() string {
	content, _ := os.ReadFile(p.logPath)
	if len(content) > 8<<10 {
		content = content[len(content)-8<<10:]
	}
	return string(bytes.TrimSpace(content))
}

// requestCount reads img_registry_requests_total from /metrics summed over statuses.
func (p *registryProcess) requestCount(route, method string) (float64, error) {
	resp, err := http.Get(p.url() + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	body.ReadFrom(resp.Body)

	total := 0.0
	prefix := fmt.Sprintf(`img_registry_requests_total{method="%s",route="%s",`, method, route)
	for _, line := range bytes.Split(body.Bytes(), []byte("\n")) {
		if !bytes.HasPrefix(line, []byte(prefix)) {
			continue
		}
		fields := bytes.Fields(line)
		value, err := strconv.ParseFloat(string(fields[len(fields)-1]), 64)
		if err != nil {
			return 0, err
		}
		total += value
	}
	return total, nil
}

// TestMain removes the img binary that imgBinary built, which outlives any single test.
func TestMain(m *testing.M) {
	code := m.Run()
	if builtImg != "" {
		os.RemoveAll(filepath.Dir(builtImg))
	}
	os.Exit(code)
}
