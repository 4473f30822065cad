package testpeer

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Registry is a running CNCF distribution registry (v3, pinned in tools/go.mod).
type Registry struct {
	// Addr is the host:port the registry listens on, 127.0.0.1 with a random port.
	Addr string
	// URL is "http://" + Addr.
	URL string
	// Dir is the filesystem storage root (storage.filesystem.rootdirectory).
	Dir string
	// User and Password are the credentials the registry accepts; both are empty without auth.
	User, Password string
	// LogPath is the registry's log file, printed in part when the test fails.
	LogPath string
	// Token is the token server when the registry uses token auth, otherwise nil.
	Token *TokenServer

	binary     string
	configPath string
	proc       *process
}

type registryConfig struct {
	htpasswd  bool
	tokenAuth bool
	user      string
	password  string
	extraYAML string
}

// RegistryOption changes how StartRegistry configures the registry.
type RegistryOption func(*registryConfig)

// WithHtpasswd makes the registry require HTTP basic auth with one user, stored as a bcrypt
// htpasswd file.
func WithHtpasswd(user, password string) RegistryOption {
	return func(c *registryConfig) {
		c.htpasswd = true
		c.tokenAuth = false
		c.user, c.password = user, password
	}
}

// WithTokenAuth makes the registry require bearer tokens from a token server that runs in
// the test process, checks user and password with HTTP basic auth (or an OAuth2 password
// grant) and grants every scope requested.
func WithTokenAuth(user, password string) RegistryOption {
	return func(c *registryConfig) {
		c.tokenAuth = true
		c.htpasswd = false
		c.user, c.password = user, password
	}
}

// WithRegistryConfigYAML appends top-level YAML sections to the registry's configuration, for
// settings this package does not cover (for example `proxy:` or `notifications:`). The
// sections must not repeat ones StartRegistry writes: version, log, storage, http, auth.
func WithRegistryConfigYAML(yaml string) RegistryOption {
	return func(c *registryConfig) {
		c.extraYAML += "\n" + yaml + "\n"
	}
}

// registryEnv turns off the registry's OpenTelemetry exporter, which by default sends traces
// to an OTLP collector on localhost:4318 and logs every failure to do so.
var registryEnv = []string{
	"OTEL_SDK_DISABLED=true",
	"OTEL_TRACES_EXPORTER=none",
	"OTEL_METRICS_EXPORTER=none",
	"OTEL_LOGS_EXPORTER=none",
}

// StartRegistry starts a distribution registry on 127.0.0.1 with a random port, filesystem
// storage in the test's temporary folder and deletes enabled. It returns once GET /v2/
// gets a response and stops the registry on cleanup.
func StartRegistry(t testing.TB, opts ...RegistryOption) *Registry {
	t.Helper()

	var config registryConfig
	for _, opt := range opts {
		opt(&config)
	}

	binary := Tool(t, "registry")
	dir := peerDir(t, "registry")
	reg := &Registry{
		Dir:        filepath.Join(dir, "storage"),
		User:       config.user,
		Password:   config.password,
		LogPath:    filepath.Join(dir, "registry.log"),
		binary:     binary,
		configPath: filepath.Join(dir, "config.yml"),
	}

	authYAML := registryAuthYAML(t, dir, config, reg)

	// The registry binds the port itself, so another process can take it between FreePort and
	// the bind. Retry with a new port when that happens.
	const attempts = 3
	for attempt := 1; ; attempt++ {
		port := FreePort(t)
		reg.Addr = "127.0.0.1:" + strconv.Itoa(port)
		reg.URL = "http://" + reg.Addr

		writeFile(t, reg.configPath, registryConfigYAML(reg, authYAML, config.extraYAML))

		err := reg.start(t)
		if err == nil {
			break
		}
		if attempt < attempts && strings.Contains(fileTail(reg.LogPath, logTailBytes), "address already in use") {
			continue
		}
		t.Fatalf("testpeer: start registry: %v", err)
	}

	t.Cleanup(func() {
		reg.proc.stop()
		if t.Failed() {
			t.Logf("testpeer: registry log tail (%s):\n%s", reg.LogPath, reg.proc.logTail())
		}
	})
	return reg
}

// start starts the registry with its configuration file and waits until GET /v2/ gets a
// response.
func (r *Registry) start(t testing.TB) error {
	t.Helper()

	r.proc = startProcess(t, "registry", r.LogPath, r.binary, []string{"serve", r.configPath}, registryEnv)
	if err := r.proc.waitReady(context.Background(), httpAnswers(r.URL+"/v2/")); err != nil {
		r.proc.stop()
		return err
	}
	return nil
}

// Stop stops the registry, so clients get connection errors. Restart starts it again.
func (r *Registry) Stop() {
	r.proc.stop()
}

// Restart stops the registry if it runs and starts it again on the same port, storage and
// configuration. Blobs and manifests survive. Upload sessions survive too, because the
// filesystem driver keeps them in storage and the HTTP secret in the configuration stays.
//
// NOTE: another process may bind the port while the registry is down; Restart then fails
// the test.
func (r *Registry) Restart(t testing.TB) {
	t.Helper()

	r.proc.stop()
	if err := r.start(t); err != nil {
		t.Fatalf("testpeer: restart registry: %v", err)
	}
}

func registryConfigYAML(reg *Registry, authYAML, extraYAML string) string {
	return fmt.Sprintf(`version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: %q
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %q
  secret: %q
%s%s`, reg.Dir, reg.Addr, randomHex(16), authYAML, extraYAML)
}

// registryAuthYAML writes the files auth needs and returns the `auth:` section, or "" without auth.
func registryAuthYAML(t testing.TB, dir string, config registryConfig, reg *Registry) string {
	t.Helper()

	switch {
	case config.htpasswd:
		path := filepath.Join(dir, "htpasswd")
		writeFile(t, path, htpasswdLine(t, config.user, config.password))
		return fmt.Sprintf("auth:\n  htpasswd:\n    realm: testpeer-registry\n    path: %q\n", path)

	case config.tokenAuth:
		reg.Token = StartTokenServer(t, config.user, config.password)
		bundle := filepath.Join(dir, "token-issuer.pem")
		writeFile(t, bundle, string(reg.Token.CertificatePEM()))
		return fmt.Sprintf("auth:\n  token:\n    realm: %q\n    service: %q\n    issuer: %q\n    rootcertbundle: %q\n",
			reg.Token.Realm(), reg.Token.Service, reg.Token.Issuer, bundle)
	}
	return ""
}

// DockerConfig writes a Docker config.json holding the registry's credentials and returns its
// folder, for DOCKER_CONFIG. Without credentials the config has no entries.
func (r *Registry) DockerConfig(t testing.TB) string {
	t.Helper()

	dir := filepath.Join(t.TempDir(), "docker-config")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatalf("testpeer: docker config: %v", err)
	}

	auths := map[string]any{}
	if r.User != "" || r.Password != "" {
		auths[r.Addr] = map[string]string{
			"auth": base64.StdEncoding.EncodeToString([]byte(r.User + ":" + r.Password)),
		}
	}
	data, err := json.MarshalIndent(map[string]any{"auths": auths}, "", "  ")
	if err != nil {
		t.Fatalf("testpeer: docker config: %v", err)
	}

	path := filepath.Join(dir, "config.json")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatalf("testpeer: docker config: %v", err)
	}
	return dir
}

// Crane runs crane with the registry's credentials (through DockerConfig) and returns stdout.
func (r *Registry) Crane(t testing.TB, args ...string) string {
	t.Helper()

	return CraneEnv(t, []string{"DOCKER_CONFIG=" + r.DockerConfig(t)}, args...)
}

// RegctlHost returns the regctl --host value for this registry: plain HTTP, with its
// credentials if any. regctl splits the value at commas, so credentials must not contain them.
func (r *Registry) RegctlHost() string {
	host := "reg=" + r.Addr + ",tls=disabled"
	if r.User != "" || r.Password != "" {
		host += ",user=" + r.User + ",pass=" + r.Password
	}
	return host
}

// Regctl runs regctl with --host set to RegctlHost and returns stdout.
func (r *Registry) Regctl(t testing.TB, args ...string) string {
	t.Helper()

	return Regctl(t, append([]string{"--host", r.RegctlHost()}, args...)...)
}

// Ref returns the reference "Addr/repository" followed by suffix, for example
// r.Ref("app", ":v1") or r.Ref("app", "@sha256:…").
func (r *Registry) Ref(repository, suffix string) string {
	return r.Addr + "/" + repository + suffix
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()

	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatalf("testpeer: write %s: %v", path, err)
	}
}

func randomHex(n int) string {
	buf := make([]byte, n)
	if _, err := rand.Read(buf); err != nil {
		panic(err)
	}
	return hex.EncodeToString(buf)
}
