package reapi

import (
	"context"
	"strings"
	"testing"
)

const testHash = "ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12"

func TestParseBytestreamURI(t *testing.T) {
	tests := []struct {
		uri          string
		wantEndpoint string
		wantInstance string
	}{
		{"bytestream://127.0.0.1:9092/blobs/" + testHash + "/1234", "grpc://127.0.0.1:9092", ""},
		{"bytestream://cache:9092/main/blobs/" + testHash + "/1234", "grpc://cache:9092", "main"},
		{"bytestream://cache:9092/a/b/c/blobs/" + testHash + "/1234", "grpc://cache:9092", "a/b/c"},
	}
	for _, tt := range tests {
		t.Run(tt.uri, func(t *testing.T) {
			endpoint, instance, d, err := ParseBytestreamURI(tt.uri)
			if err != nil {
				t.Fatalf("ParseBytestreamURI: %v", err)
			}
			if endpoint != tt.wantEndpoint {
				t.Errorf("endpoint = %q, want %q", endpoint, tt.wantEndpoint)
			}
			if instance != tt.wantInstance {
				t.Errorf("instance = %q, want %q", instance, tt.wantInstance)
			}
			if want := (Digest{Hash: testHash, Size: 1234}); d != want {
				t.Errorf("digest = %v, want %v", d, want)
			}
		})
	}
}

func TestParseBytestreamURIInvalid(t *testing.T) {
	tests := []struct {
		uri  string
		want string
	}{
		{"grpc://cache:9092/blobs/" + testHash + "/1", "want bytestream://"},
		{"bytestream:///blobs/" + testHash + "/1", "want bytestream://"},
		{"bytestream://cache:9092/" + testHash + "/1", "must end in blobs/<hash>/<size>"},
		{"bytestream://cache:9092/blobs/" + testHash + "/x", "size \"x\" is not a number"},
		{"bytestream://cache:9092/blobs/ABC/1", "64 lowercase hex digits"},
		{"bytestream://cache:9092/blobs/blake3/" + testHash + "/1", "only SHA-256"},
	}
	for _, tt := range tests {
		t.Run(tt.uri, func(t *testing.T) {
			_, _, _, err := ParseBytestreamURI(tt.uri)
			if err == nil {
				t.Fatal("ParseBytestreamURI succeeded, want an error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}

func TestResourceNames(t *testing.T) {
	d := Digest{Hash: testHash, Size: 5}

	tests := []struct {
		got, want string
	}{
		{readResourceName("", d, false), "blobs/" + testHash + "/5"},
		{readResourceName("a/b", d, false), "a/b/blobs/" + testHash + "/5"},
		{readResourceName("a", d, true), "a/compressed-blobs/zstd/" + testHash + "/5"},
		{writeResourceName("", "u-1", d), "uploads/u-1/blobs/" + testHash + "/5"},
		{writeResourceName("a/b", "u-1", d), "a/b/uploads/u-1/blobs/" + testHash + "/5"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("resource name = %q, want %q", tt.got, tt.want)
		}
	}
}

func TestDigestValidate(t *testing.T) {
	tests := []struct {
		name string
		d    Digest
		want string
	}{
		{"uppercase", Digest{Hash: strings.ToUpper(testHash), Size: 1}, "lowercase hex"},
		{"short", Digest{Hash: "ab12", Size: 1}, "lowercase hex"},
		{"prefixed", Digest{Hash: "sha256:" + testHash[7:], Size: 1}, "lowercase hex"},
		{"negative size", Digest{Hash: testHash, Size: -1}, "negative size"},
		{"empty with wrong hash", Digest{Hash: testHash, Size: 0}, "size 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.d.Validate()
			if err == nil {
				t.Fatal("Validate succeeded, want an error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
		})
	}

	if err := DigestOf(nil).Validate(); err != nil {
		t.Errorf("Validate of the empty digest: %v", err)
	}
	if got := DigestOf([]byte("abc")).String(); got != "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad/3" {
		t.Errorf("DigestOf(abc) = %s", got)
	}
}

func TestHelperURI(t *testing.T) {
	tests := []struct {
		authority string
		method    string
		want      string
	}{
		{"127.0.0.1:9092", "/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs", "https://127.0.0.1:9092/build.bazel.remote.execution.v2.ContentAddressableStorage"},
		{"cache.example:443", "/google.bytestream.ByteStream/Read", "https://cache.example/google.bytestream.ByteStream"},
		{"localhost", "/build.bazel.remote.execution.v2.Capabilities/GetCapabilities", "https://localhost/build.bazel.remote.execution.v2.Capabilities"},
	}
	for _, tt := range tests {
		a := &callAuth{authority: tt.authority}
		if got := a.helperURI(tt.method); got != tt.want {
			t.Errorf("helperURI(%q, %q) = %q, want %q", tt.authority, tt.method, got, tt.want)
		}
	}
}

func TestDialInvalidEndpoint(t *testing.T) {
	tests := []struct {
		endpoint string
		want     string
	}{
		{"http://127.0.0.1:9092", "unsupported scheme \"http\""},
		{"grpc://127.0.0.1", "missing host:port"},
		{"grpc://127.0.0.1:9092/instance", "set the instance name separately"},
		{"unix://relative/path", "unix:///absolute/path"},
		{"127.0.0.1:9092", "missing scheme; use grpcs://127.0.0.1:9092 for TLS"},
	}
	for _, tt := range tests {
		t.Run(tt.endpoint, func(t *testing.T) {
			_, err := Dial(context.Background(), tt.endpoint, Options{})
			if err == nil {
				t.Fatal("Dial succeeded, want an error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
			if !strings.HasPrefix(err.Error(), "remote cache ") {
				t.Errorf("error %q does not start with \"remote cache \"", err)
			}
		})
	}
}

func TestParseEndpoint(t *testing.T) {
	tests := []struct {
		endpoint      string
		wantTarget    string
		wantAuthority string
		wantDisplay   string
		wantBasicAuth bool
	}{
		{"grpc://127.0.0.1:9092", "127.0.0.1:9092", "127.0.0.1:9092", "grpc://127.0.0.1:9092", false},
		{"grpcs://cache.example", "cache.example:443", "cache.example:443", "grpcs://cache.example", false},
		{"grpcs://user:pass@cache.example:8443/", "cache.example:8443", "cache.example:8443", "grpcs://cache.example:8443", true},
		{"unix:///run/cache.sock", "unix:///run/cache.sock", "localhost", "unix:///run/cache.sock", false},
	}
	for _, tt := range tests {
		t.Run(tt.endpoint, func(t *testing.T) {
			target, authority, _, basicAuth, display, err := parseEndpoint(tt.endpoint, "")
			if err != nil {
				t.Fatalf("parseEndpoint: %v", err)
			}
			if target != tt.wantTarget {
				t.Errorf("target = %q, want %q", target, tt.wantTarget)
			}
			if authority != tt.wantAuthority {
				t.Errorf("authority = %q, want %q", authority, tt.wantAuthority)
			}
			if display != tt.wantDisplay {
				t.Errorf("display = %q, want %q", display, tt.wantDisplay)
			}
			if (basicAuth != "") != tt.wantBasicAuth {
				t.Errorf("basic auth = %q, want set: %v", basicAuth, tt.wantBasicAuth)
			}
		})
	}
}
