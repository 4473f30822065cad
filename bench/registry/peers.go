package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// server is a peer process (a registry, bazel-remote or img bes) started by the benchmark.
type server struct {
	name   string
	cmd    *exec.Cmd
	log    string
	exited chan struct{}
}

// startServer starts binary with args, its output appended to log, and waits until ready
// returns nil.
func startServer(name, log, binary string, args, env []string, ready func() error) (*server, error) {
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
	s := &server{name: name, cmd: cmd, log: log, exited: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(s.exited)
	}()

	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-s.exited:
			return nil, fmt.Errorf("%s exited before it was ready; log %s:\n%s", name, log, fileTail(log, 2000))
		default:
		}
		if err := ready(); err == nil {
			return s, nil
		} else if time.Now().After(deadline) {
			s.stop()
			return nil, fmt.Errorf("%s not ready after 30s: %w", name, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *server) pid() int {
	return s.cmd.Process.Pid
}

// stop sends SIGTERM and kills the server if it has not exited after 5 seconds.
func (s *server) stop() {
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
	}
}

// freePort returns a port that was free on 127.0.0.1 a moment ago.
func freePort() (int, error) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer listener.Close()
	return listener.Addr().(*net.TCPAddr).Port, nil
}

func freeAddr() (string, error) {
	port, err := freePort()
	if err != nil {
		return "", err
	}
	return "127.0.0.1:" + strconv.Itoa(port), nil
}

func httpAnswers(url string) func() error {
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

func tcpAccepts(addr string) func() error {
	return func() error {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		return conn.Close()
	}
}

// registry is a running registry (distribution or img registry) with its storage in dir.
type registry struct {
	*server
	addr string
	dir  string
	// blobCache is the grpc:// endpoint of img registry's blob-cache service, or "".
	blobCache string
}

// stopAndRemove stops the registry and deletes its storage.
func (r *registry) stopAndRemove() error {
	r.stop()
	return os.RemoveAll(r.dir)
}

// retryPorts calls start up to 3 times, because another process may take a port between
// freePort and the server's bind.
func retryPorts[T any](start func() (T, error)) (T, error) {
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

// startDistribution starts a CNCF distribution registry with empty filesystem storage
// under dir on a free 127.0.0.1 port.
func startDistribution(binary, dir string) (*registry, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	secret := make([]byte, 16)
	rand.Read(secret)

	return retryPorts(func() (*registry, error) {
		addr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		config := fmt.Sprintf(`version: 0.1
log:
  level: warn
  formatter: text
storage:
  filesystem:
    rootdirectory: %q
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %q
  secret: %q
`, filepath.Join(dir, "storage"), addr, hex.EncodeToString(secret))
		configPath := filepath.Join(dir, "config.yml")
		if err := os.WriteFile(configPath, []byte(config), 0o644); err != nil {
			return nil, err
		}

		// The registry exports OpenTelemetry traces to localhost:4318 unless these variables turn it off.
		env := []string{"OTEL_SDK_DISABLED=true", "OTEL_TRACES_EXPORTER=none", "OTEL_METRICS_EXPORTER=none", "OTEL_LOGS_EXPORTER=none"}
		s, err := startServer("distribution", filepath.Join(dir, "registry.log"), binary,
			[]string{"serve", configPath}, env, httpAnswers("http://"+addr+"/v2/"))
		if err != nil {
			return nil, err
		}
		return &registry{server: s, addr: addr, dir: dir}, nil
	})
}

// startImgRegistry starts `img registry` with a new --data-dir under dir on free 127.0.0.1
// ports. extra adds flags such as --blob-store reapi; with --enable-blobcache the
// blob-cache service gets a port too.
func startImgRegistry(img, dir string, blobCache bool, extra ...string) (*registry, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return retryPorts(func() (*registry, error) {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		args := []string{"registry", "--address", "127.0.0.1", "--port", strconv.Itoa(port), "--data-dir", filepath.Join(dir, "data")}
		r := &registry{addr: "127.0.0.1:" + strconv.Itoa(port), dir: dir}
		ready := httpAnswers("http://" + r.addr + "/v2/")
		if blobCache {
			grpcPort, err := freePort()
			if err != nil {
				return nil, err
			}
			args = append(args, "--enable-blobcache", "--grpc-port", strconv.Itoa(grpcPort))
			r.blobCache = "grpc://127.0.0.1:" + strconv.Itoa(grpcPort)
			httpReady := ready
			ready = func() error {
				if err := httpReady(); err != nil {
					return err
				}
				return tcpAccepts("127.0.0.1:" + strconv.Itoa(grpcPort))()
			}
		}
		args = append(args, extra...)
		r.server, err = startServer("img registry", filepath.Join(dir, "img-registry.log"), img, args, nil, ready)
		if err != nil {
			return nil, err
		}
		return r, nil
	})
}

// bazelRemote is a bazel-remote cache serving gRPC and HTTP.
type bazelRemote struct {
	*server
	grpcAddr, httpAddr string
}

func (b *bazelRemote) endpoint() string {
	return "grpc://" + b.grpcAddr
}

// startBazelRemote starts bazel-remote with --dir under dir, --max_size maxGiB and its
// default zstd storage.
func startBazelRemote(binary, dir string, maxGiB int) (*bazelRemote, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	b, err := retryPorts(func() (*bazelRemote, error) {
		grpcAddr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		httpAddr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		b := &bazelRemote{grpcAddr: grpcAddr, httpAddr: httpAddr}
		args := []string{"--dir", filepath.Join(dir, "cache"), "--max_size", strconv.Itoa(maxGiB), "--grpc_address", grpcAddr, "--http_address", httpAddr}
		ready := func() error {
			if err := tcpAccepts(grpcAddr)(); err != nil {
				return err
			}
			return httpAnswers("http://" + httpAddr + "/status")()
		}
		b.server, err = startServer("bazel-remote", filepath.Join(dir, "bazel-remote.log"), binary, args, nil, ready)
		if err != nil {
			return nil, err
		}
		return b, nil
	})
	if err != nil {
		return nil, errors.Join(errors.New("start bazel-remote"), err)
	}
	return b, nil
}
