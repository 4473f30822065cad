package benchkit

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
)

// Registry is a running registry (distribution or img registry) with its storage in Dir.
type Registry struct {
	*Server
	// Addr is the host:port the registry serves HTTP on.
	Addr string
	Dir  string
	// BlobCache is the grpc:// endpoint of img registry's blob-cache service, or "".
	BlobCache string
}

// StopAndRemove stops the registry and deletes its storage.
func (r *Registry) StopAndRemove() error {
	r.Stop()
	return os.RemoveAll(r.Dir)
}

// StartDistribution starts the CNCF distribution registry binary with empty filesystem
// storage under dir on a free 127.0.0.1 port.
func StartDistribution(binary, dir string) (*Registry, error) {
	return startDistribution(binary, dir, fmt.Sprintf("filesystem:\n    rootdirectory: %q", filepath.Join(dir, "storage")))
}

func startDistribution(binary, dir, storage string) (*Registry, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	secret := make([]byte, 16)
	rand.Read(secret)

	return RetryPorts(func() (*Registry, error) {
		addr, err := FreeAddr()
		if err != nil {
			return nil, err
		}
		config := fmt.Sprintf(`version: 0.1
log:
  level: warn
  formatter: text
storage:
  %s
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %q
  secret: %q
`, storage, addr, hex.EncodeToString(secret))
		configPath := filepath.Join(dir, "config.yml")
		if err := os.WriteFile(configPath, []byte(config), 0o644); err != nil {
			return nil, err
		}

		// The registry exports OpenTelemetry traces to localhost:4318 unless these variables turn it off.
		env := []string{"OTEL_SDK_DISABLED=true", "OTEL_TRACES_EXPORTER=none", "OTEL_METRICS_EXPORTER=none", "OTEL_LOGS_EXPORTER=none"}
		s, err := StartServer("distribution", filepath.Join(dir, "registry.log"), binary,
			[]string{"serve", configPath}, env, HTTPAnswers("http://"+addr+"/v2/"))
		if err != nil {
			return nil, err
		}
		return &Registry{Server: s, Addr: addr, Dir: dir}, nil
	})
}

// StartImgRegistry starts `img registry` with a new --data-dir under dir on free 127.0.0.1
// ports. extra adds flags such as --blob-store reapi. With blobCache set, the blob-cache
// service (--enable-blobcache) gets a port too.
func StartImgRegistry(img, dir string, blobCache bool, extra ...string) (*Registry, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return RetryPorts(func() (*Registry, error) {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		args := []string{"registry", "--address", "127.0.0.1", "--port", strconv.Itoa(port), "--data-dir", filepath.Join(dir, "data")}
		r := &Registry{Addr: "127.0.0.1:" + strconv.Itoa(port), Dir: dir}
		ready := HTTPAnswers("http://" + r.Addr + "/v2/")
		if blobCache {
			grpcPort, err := FreePort()
			if err != nil {
				return nil, err
			}
			args = append(args, "--enable-blobcache", "--grpc-port", strconv.Itoa(grpcPort))
			r.BlobCache = "grpc://127.0.0.1:" + strconv.Itoa(grpcPort)
			httpReady := ready
			ready = func() error {
				if err := httpReady(); err != nil {
					return err
				}
				return TCPAccepts("127.0.0.1:" + strconv.Itoa(grpcPort))()
			}
		}
		args = append(args, extra...)
		r.Server, err = StartServer("img registry", filepath.Join(dir, "img-registry.log"), img, args, nil, ready)
		if err != nil {
			return nil, err
		}
		return r, nil
	})
}

// ManifestDigest returns the Docker-Content-Digest of repository:tag, or an error when the
// registry does not have it.
func (r *Registry) ManifestDigest(repository, tag string) (string, error) {
	req, err := http.NewRequest(http.MethodHead, "http://"+r.Addr+"/v2/"+repository+"/manifests/"+tag, nil)
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
		return "", fmt.Errorf("HEAD manifest %s/%s:%s: HTTP %d", r.Addr, repository, tag, resp.StatusCode)
	}
	return resp.Header.Get("Docker-Content-Digest"), nil
}

// BazelRemote is a bazel-remote cache serving gRPC and HTTP.
type BazelRemote struct {
	*Server
	GRPCAddr, HTTPAddr string
}

// Endpoint returns the grpc:// URL of the cache, as img's --remote-cache flags take it.
func (b *BazelRemote) Endpoint() string {
	return "grpc://" + b.GRPCAddr
}

// StartBazelRemote starts bazel-remote with --dir under dir, --max_size maxGiB and its
// default zstd storage.
func StartBazelRemote(binary, dir string, maxGiB int) (*BazelRemote, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	b, err := RetryPorts(func() (*BazelRemote, error) {
		grpcAddr, err := FreeAddr()
		if err != nil {
			return nil, err
		}
		httpAddr, err := FreeAddr()
		if err != nil {
			return nil, err
		}
		b := &BazelRemote{GRPCAddr: grpcAddr, HTTPAddr: httpAddr}
		args := []string{"--dir", filepath.Join(dir, "cache"), "--max_size", strconv.Itoa(maxGiB), "--grpc_address", grpcAddr, "--http_address", httpAddr}
		ready := func() error {
			if err := TCPAccepts(grpcAddr)(); err != nil {
				return err
			}
			return HTTPAnswers("http://" + httpAddr + "/status")()
		}
		b.Server, err = StartServer("bazel-remote", filepath.Join(dir, "bazel-remote.log"), binary, args, nil, ready)
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
