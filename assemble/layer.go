// Package assemble builds image blobs at Bazel build time: layers from files and tars,
// image configs and manifests, indexes, and the push request that `img push` reads.
// Every output is deterministic, so the same inputs give the same digests on any
// machine, which is what lets a remote cache and a registry share blobs.
package assemble

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// The layer compressions that WriteLayer supports.
const (
	CompressionGzip = "gzip"
	CompressionZstd = "zstd"
	CompressionNone = "none"
)

// epoch is the modification time of every entry that a layer creates. A fixed time
// keeps the layer digest independent of when and where the inputs were checked out.
var epoch = time.Unix(0, 0).UTC()

// File is one file to put into a layer.
type File struct {
	// Source is the file on disk. A directory adds everything below it, under Path.
	Source string
	// Path is the destination in the image, for example "/app/server".
	Path string
	// Mode is the permission bits, or -1 to use 0755 for a source with any execute
	// bit and 0644 otherwise.
	Mode int64
	// UID and GID own the entry, or -1 for the layer's default owner.
	UID, GID int
}

// LayerOptions describes a layer: files first sorted by path, then the entries of
// each tar in the order given, so that a file can be replaced by a later tar entry.
type LayerOptions struct {
	Files []File
	// Symlinks maps a link path in the image to its target, such as
	// "/usr/bin/app" to "/app/bin/app". Links are sorted together with Files.
	Symlinks map[string]string
	// Tars are tar files, plain, gzip or zstd, whose entries are copied with fixed
	// timestamps and their own owners and modes.
	Tars []string
	// Compression is CompressionGzip (the default when empty), CompressionZstd or
	// CompressionNone.
	Compression string
	// DefaultUID and DefaultGID own files and created directories without an owner.
	DefaultUID, DefaultGID int
}

// LayerMetadata describes a built layer blob; `img layer` writes it as JSON next to the
// blob and `img manifest` reads it.
type LayerMetadata struct {
	Descriptor ocispec.Descriptor `json:"descriptor"`
	// DiffID is the digest of the uncompressed tar, which the image config lists.
	DiffID digest.Digest `json:"diff_id"`
	// File is the path of the blob, as given to `img layer --output`.
	File string `json:"file"`
}

// LayerMediaType returns the OCI layer media type for a compression name.
func LayerMediaType(compression string) (string, error) {
	switch compression {
	case CompressionGzip, "":
		return ocispec.MediaTypeImageLayerGzip, nil
	case CompressionZstd:
		return ocispec.MediaTypeImageLayerZstd, nil
	case CompressionNone:
		return ocispec.MediaTypeImageLayer, nil
	}
	return "", fmt.Errorf("unknown compression %q; use gzip, zstd or none", compression)
}

// WriteLayer streams the layer that opts describes into w and returns its descriptor
// and diff ID. It holds one file's header at a time, never a whole layer.
func WriteLayer(w io.Writer, opts LayerOptions) (LayerMetadata, error) {
	mediaType, err := LayerMediaType(opts.Compression)
	if err != nil {
		return LayerMetadata{}, err
	}

	blobHash := sha256.New()
	blobCounter := &countingWriter{}
	compressed := io.MultiWriter(w, blobHash, blobCounter)

	compressor, err := newCompressor(compressed, opts.Compression)
	if err != nil {
		return LayerMetadata{}, err
	}
	diffHash := sha256.New()
	tw := tar.NewWriter(io.MultiWriter(compressor, diffHash))

	lw := &layerWriter{tar: tw, opts: opts, dirs: map[string]bool{}}
	if err := lw.writeFiles(); err != nil {
		return LayerMetadata{}, err
	}
	for _, tarPath := range opts.Tars {
		if err := lw.copyTar(tarPath); err != nil {
			return LayerMetadata{}, err
		}
	}

	if err := tw.Close(); err != nil {
		return LayerMetadata{}, fmt.Errorf("finish layer tar: %w", err)
	}
	if err := compressor.Close(); err != nil {
		return LayerMetadata{}, fmt.Errorf("finish layer %s compression: %w", opts.Compression, err)
	}
	return LayerMetadata{
		Descriptor: ocispec.Descriptor{
			MediaType: mediaType,
			Digest:    digest.NewDigest(digest.SHA256, blobHash),
			Size:      blobCounter.n,
		},
		DiffID: digest.NewDigest(digest.SHA256, diffHash),
	}, nil
}

// WriteLayerFile writes the layer to path and records path in the metadata.
func WriteLayerFile(path string, opts LayerOptions) (LayerMetadata, error) {
	f, err := os.Create(path)
	if err != nil {
		return LayerMetadata{}, err
	}
	buffered := bufio.NewWriterSize(f, 1<<20)
	meta, err := WriteLayer(buffered, opts)
	if err == nil {
		err = buffered.Flush()
	}
	if closeErr := f.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		return LayerMetadata{}, fmt.Errorf("layer %s: %w", path, err)
	}
	meta.File = path
	return meta, nil
}

type countingWriter struct{ n int64 }

func (c *countingWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// newCompressor returns a compressor with fixed settings. The gzip header carries no
// name and no modification time, and zstd runs single-threaded, so the bytes depend
// only on the input and the library version.
func newCompressor(w io.Writer, compression string) (io.WriteCloser, error) {
	switch compression {
	case CompressionGzip, "":
		return gzip.NewWriterLevel(w, gzip.DefaultCompression)
	case CompressionZstd:
		return zstd.NewWriter(w, zstd.WithEncoderConcurrency(1))
	case CompressionNone:
		return nopCloser{w}, nil
	}
	return nil, fmt.Errorf("unknown compression %q; use gzip, zstd or none", compression)
}

// layerWriter writes tar entries and remembers which directories exist, so that
// every entry's parent directories come before it, each once.
type layerWriter struct {
	tar  *tar.Writer
	opts LayerOptions
	dirs map[string]bool
}

// layerEntry is one regular file or directory found under a File, or a symlink from
// Symlinks.
type layerEntry struct {
	name       string // tar name: relative, slash separated, no leading "./"
	source     string
	info       fs.FileInfo
	file       File
	linkTarget string // set for a symlink, which has no source
}

func (lw *layerWriter) writeFiles() error {
	var entries []layerEntry
	for _, f := range lw.opts.Files {
		found, err := expandFile(f)
		if err != nil {
			return err
		}
		entries = append(entries, found...)
	}
	for link, target := range lw.opts.Symlinks {
		name, err := tarName(link)
		if err != nil {
			return err
		}
		if target == "" {
			return fmt.Errorf("symlink %s has an empty target", link)
		}
		entries = append(entries, layerEntry{name: name, source: "symlink to " + target, linkTarget: target, file: File{Mode: -1, UID: -1, GID: -1}})
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].name < entries[j].name })

	for i := range entries {
		if i > 0 && entries[i].name == entries[i-1].name {
			return fmt.Errorf("destination /%s is given twice, by %s and %s; give each entry its own path", entries[i].name, entries[i-1].source, entries[i].source)
		}
		if err := lw.writeEntry(entries[i]); err != nil {
			return err
		}
	}
	return nil
}

// expandFile returns the entries for f: f itself, or for a directory every entry
// below it. Symlinks are followed, because Bazel hands actions their inputs as
// symlinks into the source tree.
func expandFile(f File) ([]layerEntry, error) {
	name, err := tarName(f.Path)
	if err != nil {
		return nil, err
	}
	info, err := os.Stat(f.Source)
	if err != nil {
		return nil, fmt.Errorf("layer file for %s: %w", f.Path, err)
	}
	if !info.IsDir() {
		return []layerEntry{{name: name, source: f.Source, info: info, file: f}}, nil
	}

	var entries []layerEntry
	err = filepath.WalkDir(f.Source, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(f.Source, p)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		info, err := os.Stat(p)
		if err != nil {
			return err
		}
		entries = append(entries, layerEntry{name: path.Join(name, filepath.ToSlash(rel)), source: p, info: info, file: f})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("layer directory %s for %s: %w", f.Source, f.Path, err)
	}
	return entries, nil
}

// tarName turns an image path into a tar entry name: "/app/bin" and "app/bin" both
// become "app/bin".
func tarName(p string) (string, error) {
	name := strings.TrimPrefix(path.Clean("/"+p), "/")
	if name == "" {
		return "", fmt.Errorf("destination %q is the root directory; name a file below /", p)
	}
	return name, nil
}

func (lw *layerWriter) writeEntry(e layerEntry) error {
	uid, gid := lw.owner(e.file.UID, e.file.GID)
	if err := lw.writeParents(e.name); err != nil {
		return err
	}

	header := &tar.Header{
		Name:    e.name,
		ModTime: epoch,
		Uid:     uid,
		Gid:     gid,
	}
	if e.linkTarget != "" {
		header.Typeflag = tar.TypeSymlink
		header.Linkname = e.linkTarget
		header.Mode = 0o777
		return lw.tar.WriteHeader(header)
	}
	if e.info.IsDir() {
		if lw.dirs[e.name] {
			return nil
		}
		header.Typeflag = tar.TypeDir
		header.Name += "/"
		header.Mode = 0o755
		lw.dirs[e.name] = true
		return lw.tar.WriteHeader(header)
	}

	header.Typeflag = tar.TypeReg
	header.Size = e.info.Size()
	header.Mode = 0o644
	if e.info.Mode()&0o111 != 0 {
		header.Mode = 0o755
	}
	if e.file.Mode >= 0 {
		header.Mode = e.file.Mode
	}
	if err := lw.tar.WriteHeader(header); err != nil {
		return fmt.Errorf("layer entry %s: %w", e.name, err)
	}
	return copyFileInto(lw.tar, e.source, e.info.Size())
}

func copyFileInto(w io.Writer, source string, size int64) error {
	f, err := os.Open(source)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.Copy(w, f)
	if err != nil {
		return fmt.Errorf("copy %s into layer: %w", source, err)
	}
	if n != size {
		return fmt.Errorf("copy %s into layer: read %d bytes, expected %d; did the file change during the build?", source, n, size)
	}
	return nil
}

// writeParents writes a directory entry for every parent of name that no earlier entry
// created, outermost first.
func (lw *layerWriter) writeParents(name string) error {
	dir := path.Dir(name)
	if dir == "." || lw.dirs[dir] {
		return nil
	}
	if err := lw.writeParents(dir); err != nil {
		return err
	}
	lw.dirs[dir] = true
	return lw.tar.WriteHeader(&tar.Header{
		Typeflag: tar.TypeDir,
		Name:     dir + "/",
		Mode:     0o755,
		ModTime:  epoch,
		Uid:      lw.opts.DefaultUID,
		Gid:      lw.opts.DefaultGID,
	})
}

func (lw *layerWriter) owner(uid, gid int) (int, int) {
	if uid < 0 {
		uid = lw.opts.DefaultUID
	}
	if gid < 0 {
		gid = lw.opts.DefaultGID
	}
	return uid, gid
}

// copyTar copies every entry of the tar at tarPath, compressed or not, with fixed
// timestamps. Owners, modes and link targets stay as the tar has them.
func (lw *layerWriter) copyTar(tarPath string) error {
	f, err := os.Open(tarPath)
	if err != nil {
		return fmt.Errorf("layer tar: %w", err)
	}
	defer f.Close()
	r, err := decompressed(bufio.NewReaderSize(f, 1<<20))
	if err != nil {
		return fmt.Errorf("layer tar %s: %w", tarPath, err)
	}
	defer r.Close()

	tr := tar.NewReader(r)
	for {
		header, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("layer tar %s: %w", tarPath, err)
		}
		if err := lw.copyTarEntry(tr, header); err != nil {
			return fmt.Errorf("layer tar %s: entry %s: %w", tarPath, header.Name, err)
		}
	}
}

func (lw *layerWriter) copyTarEntry(tr *tar.Reader, header *tar.Header) error {
	name := strings.TrimPrefix(path.Clean("/"+header.Name), "/")
	if name == "" {
		return nil // the tar's "./" root entry; the image root always exists
	}
	if err := lw.writeParents(name); err != nil {
		return err
	}

	out := &tar.Header{
		Typeflag:   header.Typeflag,
		Name:       name,
		Linkname:   header.Linkname,
		Size:       header.Size,
		Mode:       header.Mode,
		Uid:        header.Uid,
		Gid:        header.Gid,
		Uname:      header.Uname,
		Gname:      header.Gname,
		ModTime:    epoch,
		Devmajor:   header.Devmajor,
		Devminor:   header.Devminor,
		PAXRecords: nonTimePAXRecords(header.PAXRecords),
	}
	switch header.Typeflag {
	case tar.TypeDir:
		out.Name += "/"
		lw.dirs[name] = true
	case tar.TypeLink:
		// A hard link names another entry of the archive, so its target gets the same
		// normalization as entry names; symlink targets stay as they are.
		out.Linkname = strings.TrimPrefix(path.Clean("/"+header.Linkname), "/")
	}
	if err := lw.tar.WriteHeader(out); err != nil {
		return err
	}
	if header.Typeflag == tar.TypeReg || header.Typeflag == tar.TypeRegA {
		if _, err := io.Copy(lw.tar, tr); err != nil {
			return err
		}
	}
	return nil
}

// nonTimePAXRecords returns the PAX records, such as extended attributes, without the
// time records, which would defeat the fixed timestamps, and without the records that
// duplicate header fields, which tar.Writer sets itself.
func nonTimePAXRecords(records map[string]string) map[string]string {
	var preserved map[string]string
	for key, value := range records {
		switch key {
		case "mtime", "atime", "ctime", "path", "linkpath", "size", "uid", "gid", "uname", "gname":
			continue
		}
		if preserved == nil {
			preserved = map[string]string{}
		}
		preserved[key] = value
	}
	return preserved
}

var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// decompressed returns r decompressed when it starts with a gzip or zstd header.
func decompressed(r *bufio.Reader) (io.ReadCloser, error) {
	head, err := r.Peek(4)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	switch {
	case bytes.HasPrefix(head, gzipMagic):
		return gzip.NewReader(r)
	case bytes.HasPrefix(head, zstdMagic):
		decoder, err := zstd.NewReader(r)
		if err != nil {
			return nil, err
		}
		return decoder.IOReadCloser(), nil
	}
	return io.NopCloser(r), nil
}
