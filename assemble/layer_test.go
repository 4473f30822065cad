package assemble

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func writeTestFile(t *testing.T, path, content string, mode os.FileMode) string {
	t.Helper()

	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	return path
}

func buildLayer(t *testing.T, opts LayerOptions) ([]byte, LayerMetadata) {
	t.Helper()

	var buf bytes.Buffer
	meta, err := WriteLayer(&buf, opts)
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), meta
}

// readTar decompresses blob by media type and returns its headers and file contents.
func readTar(t *testing.T, blob []byte, mediaType string) ([]*tar.Header, map[string]string) {
	t.Helper()

	var r io.Reader = bytes.NewReader(blob)
	switch mediaType {
	case ocispec.MediaTypeImageLayerGzip:
		gz, err := gzip.NewReader(r)
		if err != nil {
			t.Fatal(err)
		}
		r = gz
	case ocispec.MediaTypeImageLayerZstd:
		decoder, err := zstd.NewReader(r)
		if err != nil {
			t.Fatal(err)
		}
		defer decoder.Close()
		r = decoder
	}
	tr := tar.NewReader(r)
	var headers []*tar.Header
	contents := map[string]string{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return headers, contents
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		headers = append(headers, h)
		contents[h.Name] = string(body)
	}
}

func TestWriteLayerDeterministic(t *testing.T) {
	dir := t.TempDir()
	a := writeTestFile(t, filepath.Join(dir, "a.txt"), "alpha", 0o644)
	b := writeTestFile(t, filepath.Join(dir, "b.sh"), "#!/bin/sh\n", 0o755)
	opts := LayerOptions{Files: []File{
		{Source: b, Path: "/app/b.sh", Mode: -1, UID: -1, GID: -1},
		{Source: a, Path: "/app/a.txt", Mode: -1, UID: -1, GID: -1},
	}}

	first, firstMeta := buildLayer(t, opts)
	later := time.Now().Add(72 * time.Hour)
	for _, path := range []string{a, b} {
		if err := os.Chtimes(path, later, later); err != nil {
			t.Fatal(err)
		}
	}
	// The order of Files must not matter either.
	opts.Files[0], opts.Files[1] = opts.Files[1], opts.Files[0]
	second, secondMeta := buildLayer(t, opts)

	if !bytes.Equal(first, second) {
		t.Error("layer bytes differ after changing timestamps and file order")
	}
	if firstMeta.Descriptor.Digest != secondMeta.Descriptor.Digest {
		t.Errorf("digests differ: %s and %s", firstMeta.Descriptor.Digest, secondMeta.Descriptor.Digest)
	}
	if firstMeta.DiffID != secondMeta.DiffID {
		t.Errorf("diff IDs differ: %s and %s", firstMeta.DiffID, secondMeta.DiffID)
	}
}

func TestWriteLayerDescriptor(t *testing.T) {
	dir := t.TempDir()
	a := writeTestFile(t, filepath.Join(dir, "a.txt"), "alpha", 0o644)

	blob, meta := buildLayer(t, LayerOptions{Files: []File{{Source: a, Path: "a.txt", Mode: -1, UID: -1, GID: -1}}})

	if meta.Descriptor.MediaType != ocispec.MediaTypeImageLayerGzip {
		t.Errorf("media type is %s, expected %s", meta.Descriptor.MediaType, ocispec.MediaTypeImageLayerGzip)
	}
	if got := digest.FromBytes(blob); got != meta.Descriptor.Digest {
		t.Errorf("digest is %s, the blob hashes to %s", meta.Descriptor.Digest, got)
	}
	if meta.Descriptor.Size != int64(len(blob)) {
		t.Errorf("size is %d, the blob has %d bytes", meta.Descriptor.Size, len(blob))
	}
	gz, err := gzip.NewReader(bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	uncompressed, err := io.ReadAll(gz)
	if err != nil {
		t.Fatal(err)
	}
	if got := digest.FromBytes(uncompressed); got != meta.DiffID {
		t.Errorf("diff ID is %s, the uncompressed tar hashes to %s", meta.DiffID, got)
	}
}

func TestWriteLayerGzipHeader(t *testing.T) {
	dir := t.TempDir()
	a := writeTestFile(t, filepath.Join(dir, "a.txt"), "alpha", 0o644)

	blob, _ := buildLayer(t, LayerOptions{Files: []File{{Source: a, Path: "a.txt", Mode: -1, UID: -1, GID: -1}}})

	// RFC 1952: bytes 0-1 magic, 2 method, 3 flags, 4-7 mtime, 9 OS.
	if blob[0] != 0x1f || blob[1] != 0x8b {
		t.Fatalf("blob starts with % x, expected the gzip magic 1f 8b", blob[:2])
	}
	if flags := blob[3]; flags != 0 {
		t.Errorf("gzip flags are %#x, expected 0 (no name, comment or extra field)", flags)
	}
	if mtime := blob[4:8]; !bytes.Equal(mtime, []byte{0, 0, 0, 0}) {
		t.Errorf("gzip mtime is % x, expected zero", mtime)
	}
	gz, err := gzip.NewReader(bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	if gz.Name != "" {
		t.Errorf("gzip name is %q, expected empty", gz.Name)
	}
}

func TestWriteLayerTarHeaders(t *testing.T) {
	dir := t.TempDir()
	conf := writeTestFile(t, filepath.Join(dir, "app.conf"), "port=80", 0o600)
	run := writeTestFile(t, filepath.Join(dir, "run"), "#!/bin/sh\n", 0o700)
	data := writeTestFile(t, filepath.Join(dir, "data"), "d", 0o644)

	blob, meta := buildLayer(t, LayerOptions{
		DefaultUID: 10,
		DefaultGID: 20,
		Files: []File{
			{Source: run, Path: "/usr/local/bin/run", Mode: -1, UID: -1, GID: -1},
			{Source: conf, Path: "/etc/app/app.conf", Mode: -1, UID: -1, GID: -1},
			{Source: data, Path: "/var/lib/app/data", Mode: 0o640, UID: 1000, GID: 1001},
		},
	})
	headers, contents := readTar(t, blob, meta.Descriptor.MediaType)

	var names []string
	for _, h := range headers {
		names = append(names, h.Name)
	}
	wantNames := []string{
		"etc/", "etc/app/", "etc/app/app.conf",
		"usr/", "usr/local/", "usr/local/bin/", "usr/local/bin/run",
		"var/", "var/lib/", "var/lib/app/", "var/lib/app/data",
	}
	if strings.Join(names, " ") != strings.Join(wantNames, " ") {
		t.Errorf("entries are\n%q\nexpected\n%q", names, wantNames)
	}

	byName := map[string]*tar.Header{}
	for _, h := range headers {
		byName[h.Name] = h
		if !h.ModTime.Equal(time.Unix(0, 0)) {
			t.Errorf("entry %s has mtime %v, expected the Unix epoch", h.Name, h.ModTime)
		}
		if h.Uname != "" || h.Gname != "" {
			t.Errorf("entry %s has owner names %q:%q, expected none", h.Name, h.Uname, h.Gname)
		}
	}
	tests := []struct {
		name     string
		mode     int64
		uid, gid int
	}{
		{"etc/", 0o755, 10, 20},
		{"etc/app/app.conf", 0o644, 10, 20},
		{"usr/local/bin/run", 0o755, 10, 20},
		{"var/lib/app/data", 0o640, 1000, 1001},
	}
	for _, tt := range tests {
		h := byName[tt.name]
		if h == nil {
			t.Errorf("entry %s is missing", tt.name)
			continue
		}
		if h.Mode != tt.mode {
			t.Errorf("entry %s has mode %o, expected %o", tt.name, h.Mode, tt.mode)
		}
		if h.Uid != tt.uid || h.Gid != tt.gid {
			t.Errorf("entry %s is owned by %d:%d, expected %d:%d", tt.name, h.Uid, h.Gid, tt.uid, tt.gid)
		}
	}
	if got := contents["etc/app/app.conf"]; got != "port=80" {
		t.Errorf("etc/app/app.conf contains %q, expected port=80", got)
	}
}

func TestWriteLayerDirectorySource(t *testing.T) {
	dir := t.TempDir()
	writeTestFile(t, filepath.Join(dir, "tree", "b", "two.txt"), "2", 0o644)
	writeTestFile(t, filepath.Join(dir, "tree", "one.txt"), "1", 0o644)

	blob, meta := buildLayer(t, LayerOptions{Files: []File{{Source: filepath.Join(dir, "tree"), Path: "/srv", Mode: -1, UID: -1, GID: -1}}})
	headers, contents := readTar(t, blob, meta.Descriptor.MediaType)

	var names []string
	for _, h := range headers {
		names = append(names, h.Name)
	}
	want := "srv/ srv/b/ srv/b/two.txt srv/one.txt"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("entries are %q, expected %q", got, want)
	}
	if contents["srv/b/two.txt"] != "2" {
		t.Errorf("srv/b/two.txt contains %q, expected 2", contents["srv/b/two.txt"])
	}
}

func TestWriteLayerDuplicateDestination(t *testing.T) {
	dir := t.TempDir()
	a := writeTestFile(t, filepath.Join(dir, "a"), "a", 0o644)
	b := writeTestFile(t, filepath.Join(dir, "b"), "b", 0o644)

	_, err := WriteLayer(io.Discard, LayerOptions{Files: []File{
		{Source: a, Path: "/x", Mode: -1, UID: -1, GID: -1},
		{Source: b, Path: "x", Mode: -1, UID: -1, GID: -1},
	}})
	if err == nil || !strings.Contains(err.Error(), "given twice") {
		t.Errorf("error is %v, expected one about /x given twice", err)
	}
}

// writeTestTar writes a tar with a "./" root entry, an entry without its parent
// directory, a symlink, a hard link and a real timestamp, optionally gzip-compressed.
func writeTestTar(t *testing.T, path string, compress bool) {
	t.Helper()

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	entries := []*tar.Header{
		{Typeflag: tar.TypeDir, Name: "./", Mode: 0o755, ModTime: mtime},
		{Typeflag: tar.TypeReg, Name: "./opt/tool/bin", Mode: 0o750, Size: 4, Uid: 5, Gid: 6, ModTime: mtime},
		{Typeflag: tar.TypeSymlink, Name: "./opt/latest", Linkname: "tool", Mode: 0o777, ModTime: mtime},
		{Typeflag: tar.TypeLink, Name: "./opt/tool/bin2", Linkname: "./opt/tool/bin", Mode: 0o750, ModTime: mtime},
	}
	for _, h := range entries {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte("tool"))
		}
	}
	tw.Close()
	body := buf.Bytes()
	if compress {
		var gzBuf bytes.Buffer
		gz := gzip.NewWriter(&gzBuf)
		gz.Write(body)
		gz.Close()
		body = gzBuf.Bytes()
	}
	if err := os.WriteFile(path, body, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestWriteLayerCopiesTar(t *testing.T) {
	for _, compress := range []bool{false, true} {
		name := "plain"
		if compress {
			name = "gzip"
		}
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "in.tar")
			writeTestTar(t, path, compress)

			blob, meta := buildLayer(t, LayerOptions{Tars: []string{path}})
			headers, contents := readTar(t, blob, meta.Descriptor.MediaType)

			var names []string
			for _, h := range headers {
				names = append(names, h.Name)
				if !h.ModTime.Equal(time.Unix(0, 0)) {
					t.Errorf("entry %s has mtime %v, expected the Unix epoch", h.Name, h.ModTime)
				}
			}
			if got, want := strings.Join(names, " "), "opt/ opt/tool/ opt/tool/bin opt/latest opt/tool/bin2"; got != want {
				t.Errorf("entries are %q, expected %q", got, want)
			}
			bin := headers[2]
			if bin.Mode != 0o750 || bin.Uid != 5 || bin.Gid != 6 {
				t.Errorf("opt/tool/bin has mode %o owner %d:%d, expected the tar's 750 5:6", bin.Mode, bin.Uid, bin.Gid)
			}
			if contents["opt/tool/bin"] != "tool" {
				t.Errorf("opt/tool/bin contains %q, expected tool", contents["opt/tool/bin"])
			}
			if link := headers[3]; link.Typeflag != tar.TypeSymlink || link.Linkname != "tool" {
				t.Errorf("opt/latest is type %c to %q, expected a symlink to tool", link.Typeflag, link.Linkname)
			}
			if link := headers[4]; link.Typeflag != tar.TypeLink || link.Linkname != "opt/tool/bin" {
				t.Errorf("opt/tool/bin2 is type %c to %q, expected a hard link to opt/tool/bin", link.Typeflag, link.Linkname)
			}
		})
	}
}

func TestWriteLayerZstd(t *testing.T) {
	dir := t.TempDir()
	a := writeTestFile(t, filepath.Join(dir, "a.txt"), strings.Repeat("zstd ", 1000), 0o644)
	opts := LayerOptions{Compression: CompressionZstd, Files: []File{{Source: a, Path: "a.txt", Mode: -1, UID: -1, GID: -1}}}

	blob, meta := buildLayer(t, opts)
	again, _ := buildLayer(t, opts)

	if meta.Descriptor.MediaType != ocispec.MediaTypeImageLayerZstd {
		t.Errorf("media type is %s, expected %s", meta.Descriptor.MediaType, ocispec.MediaTypeImageLayerZstd)
	}
	if !bytes.Equal(blob, again) {
		t.Error("two zstd builds of the same files differ")
	}
	_, contents := readTar(t, blob, meta.Descriptor.MediaType)
	if contents["a.txt"] != strings.Repeat("zstd ", 1000) {
		t.Error("a.txt does not round-trip through zstd")
	}
	decoder, err := zstd.NewReader(bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	defer decoder.Close()
	hash := sha256.New()
	if _, err := io.Copy(hash, decoder); err != nil {
		t.Fatal(err)
	}
	if got := digest.NewDigest(digest.SHA256, hash); got != meta.DiffID {
		t.Errorf("diff ID is %s, the uncompressed tar hashes to %s", meta.DiffID, got)
	}
}

func TestWriteLayerUncompressed(t *testing.T) {
	dir := t.TempDir()
	a := writeTestFile(t, filepath.Join(dir, "a.txt"), "alpha", 0o644)

	blob, meta := buildLayer(t, LayerOptions{Compression: CompressionNone, Files: []File{{Source: a, Path: "a.txt", Mode: -1, UID: -1, GID: -1}}})

	if meta.Descriptor.MediaType != ocispec.MediaTypeImageLayer {
		t.Errorf("media type is %s, expected %s", meta.Descriptor.MediaType, ocispec.MediaTypeImageLayer)
	}
	if meta.Descriptor.Digest != meta.DiffID {
		t.Errorf("digest %s and diff ID %s differ for an uncompressed layer", meta.Descriptor.Digest, meta.DiffID)
	}
	if got := digest.FromBytes(blob); got != meta.DiffID {
		t.Errorf("diff ID is %s, the blob hashes to %s", meta.DiffID, got)
	}
}

func TestWriteLayerUnknownCompression(t *testing.T) {
	_, err := WriteLayer(io.Discard, LayerOptions{Compression: "brotli"})
	if err == nil || !strings.Contains(err.Error(), `"brotli"`) {
		t.Errorf("error is %v, expected one naming brotli", err)
	}
}

func TestWriteLayerSymlinks(t *testing.T) {
	dir := t.TempDir()
	app := writeTestFile(t, filepath.Join(dir, "app"), "app", 0o755)

	blob, meta := buildLayer(t, LayerOptions{
		Files:    []File{{Source: app, Path: "/app/bin/app", Mode: -1, UID: -1, GID: -1}},
		Symlinks: map[string]string{"/usr/bin/app": "/app/bin/app"},
	})
	headers, _ := readTar(t, blob, meta.Descriptor.MediaType)

	var link *tar.Header
	var names []string
	for _, h := range headers {
		names = append(names, h.Name)
		if h.Name == "usr/bin/app" {
			link = h
		}
	}
	if got, want := strings.Join(names, " "), "app/ app/bin/ app/bin/app usr/ usr/bin/ usr/bin/app"; got != want {
		t.Errorf("entries are %q, expected %q", got, want)
	}
	if link == nil || link.Typeflag != tar.TypeSymlink || link.Linkname != "/app/bin/app" {
		t.Errorf("usr/bin/app is %+v, expected a symlink to /app/bin/app", link)
	}

	_, err := WriteLayer(io.Discard, LayerOptions{
		Files:    []File{{Source: app, Path: "/usr/bin/app", Mode: -1, UID: -1, GID: -1}},
		Symlinks: map[string]string{"/usr/bin/app": "/elsewhere"},
	})
	if err == nil || !strings.Contains(err.Error(), "given twice") {
		t.Errorf("error is %v, expected one about /usr/bin/app given twice", err)
	}
}
