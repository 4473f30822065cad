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

// server is a peer process (registry or bazel-remote) started by the benchmark.
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

func httpAnswers(url string) func() error {
	return func() error {
		resp, err := http.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}
}

// registry is a CNCF distribution registry with filesystem storage in its own folder.
type registry struct {
	*server
	addr string
	dir  string
}

// startRegistry starts a registry with empty storage under dir on a free 127.0.0.1 port.
func startRegistry(binary, dir string) (*registry, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	secret := make([]byte, 16)
	rand.Read(secret)

	var lastErr error
	for range 3 {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		addr := "127.0.0.1:" + strconv.Itoa(port)
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
		s, err := startServer("registry", filepath.Join(dir, "registry.log"), binary,
			[]string{"serve", configPath}, env, httpAnswers("http://"+addr+"/v2/"))
		if err == nil {
			return &registry{server: s, addr: addr, dir: dir}, nil
		}
		// Another process may have taken the port between freePort and the bind.
		lastErr = err
	}
	return nil, lastErr
}

// manifestDigest returns the Docker-Content-Digest of repository:tag, or an error when the
// registry does not have it.
func (r *registry) manifestDigest(repository, tag string) (string, error) {
	req, err := http.NewRequest(http.MethodHead, "http://"+r.addr+"/v2/"+repository+"/manifests/"+tag, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, "+
		"application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("HEAD manifest %s/%s:%s: HTTP %d", r.addr, repository, tag, resp.StatusCode)
	}
	return resp.Header.Get("Docker-Content-Digest"), nil
}

// stopAndRemove stops the registry and deletes its storage.
func (r *registry) stopAndRemove() error {
	r.stop()
	return os.RemoveAll(r.dir)
}

// bazelRemote is a bazel-remote cache serving gRPC and HTTP.
type bazelRemote struct {
	*server
	grpcAddr, httpAddr string
}

// startBazelRemote starts bazel-remote with --dir under dir and a 10 GiB --max_size.
func startBazelRemote(binary, dir string) (*bazelRemote, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}

	var lastErr error
	for range 3 {
		grpcPort, err := freePort()
		if err != nil {
			return nil, err
		}
		httpPort, err := freePort()
		if err != nil {
			return nil, err
		}
		b := &bazelRemote{grpcAddr: "127.0.0.1:" + strconv.Itoa(grpcPort), httpAddr: "127.0.0.1:" + strconv.Itoa(httpPort)}
		args := []string{"--dir", filepath.Join(dir, "cache"), "--max_size", "10", "--grpc_address", b.grpcAddr, "--http_address", b.httpAddr}
		ready := func() error {
			conn, err := net.Dial("tcp", b.grpcAddr)
			if err != nil {
				return err
			}
			conn.Close()
			return httpAnswers("http://" + b.httpAddr + "/status")()
		}
		b.server, err = startServer("bazel-remote", filepath.Join(dir, "bazel-remote.log"), binary, args, nil, ready)
		if err == nil {
			return b, nil
		}
		lastErr = err
	}
	return nil, errors.Join(errors.New("start bazel-remote"), lastErr)
}
