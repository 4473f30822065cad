package filesystem

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/rulesimg/img/registry/blobstore"
)

// Uploads keeps upload sessions as files in one folder. Stores that commit somewhere other than
// a local folder (a REAPI cache) stage their uploads here too.
//
// A session's bytes are its file, so a session survives a dropped connection and a restart.
// The sha256 state lives in memory and is rebuilt from the file when it is lost.
type Uploads struct {
	dir string

	// direct makes sessions write request bodies with O_DIRECT (see direct.go). It is off
	// for staging folders, whose files are read back right after the upload and are better
	// served from the page cache.
	direct atomic.Bool

	mu       sync.Mutex
	sessions map[string]*Upload
}

// NewUploads returns the upload sessions kept in dir, creating dir if needed.
func NewUploads(dir string) (*Uploads, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create upload folder %s: %w", dir, err)
	}
	return &Uploads{dir: dir, sessions: map[string]*Upload{}}, nil
}

// Dir returns the folder that holds the session files.
func (u *Uploads) Dir() string { return u.dir }

// Create starts a session with an empty file and returns it held by the caller.
func (u *Uploads) Create(ctx context.Context) (*Upload, error) {
	id, err := newUploadID()
	if err != nil {
		return nil, err
	}

	path := filepath.Join(u.dir, id)
	file, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("create upload file %s: %w", path, err)
	}

	upload := newUpload(u, id, path, file, 0)
	upload.held <- struct{}{}

	u.mu.Lock()
	u.sessions[id] = upload
	u.mu.Unlock()
	return upload, nil
}

// Resume returns the session id held by the caller, waiting while another request holds it. A
// session whose file exists but which this process has not seen (it was started before a
// restart) is reopened from its file.
func (u *Uploads) Resume(ctx context.Context, id string) (*Upload, error) {
	if !validUploadID(id) {
		return nil, fmt.Errorf("upload %q: %w", id, blobstore.ErrUploadUnknown)
	}

	upload, err := u.session(id)
	if err != nil {
		return nil, err
	}

	select {
	case upload.held <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for upload %s held by another request: %w", id, ctx.Err())
	}

	// The session may have ended while this request waited for it.
	if upload.ended {
		<-upload.held
		return nil, fmt.Errorf("upload %q: %w", id, blobstore.ErrUploadUnknown)
	}
	return upload, nil
}

func (u *Uploads) session(id string) (*Upload, error) {
	u.mu.Lock()
	defer u.mu.Unlock()

	if upload, ok := u.sessions[id]; ok {
		return upload, nil
	}

	path := filepath.Join(u.dir, id)
	file, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0o644)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("upload %q: %w", id, blobstore.ErrUploadUnknown)
	}
	if err != nil {
		return nil, fmt.Errorf("reopen upload file %s: %w", path, err)
	}
	info, err := file.Stat()
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("reopen upload file %s: %w", path, err)
	}

	upload := newUpload(u, id, path, file, info.Size())
	u.sessions[id] = upload
	return upload, nil
}

// PurgeStale removes session files not written for maxAge and not held by a request, and
// returns how many it removed. Clients that abandon uploads leave such files behind.
func (u *Uploads) PurgeStale(maxAge time.Duration) (int, error) {
	entries, err := os.ReadDir(u.dir)
	if err != nil {
		return 0, fmt.Errorf("list upload folder %s: %w", u.dir, err)
	}

	removed := 0
	cutoff := time.Now().Add(-maxAge)
	for _, entry := range entries {
		info, err := entry.Info()
		if err != nil || !info.Mode().IsRegular() || info.ModTime().After(cutoff) {
			continue
		}
		if !validUploadID(entry.Name()) {
			continue
		}
		upload, err := u.session(entry.Name())
		if err != nil {
			continue
		}
		select {
		case upload.held <- struct{}{}:
		default:
			continue // a request is writing to it, so it is not stale
		}
		if upload.ended {
			<-upload.held
			continue
		}
		if err := upload.Cancel(); err == nil {
			removed++
		}
	}
	return removed, nil
}

func (u *Uploads) forget(id string) {
	u.mu.Lock()
	delete(u.sessions, id)
	u.mu.Unlock()
}

// Upload is one session: a file written in order, hashed with sha256 as it is written.
type Upload struct {
	uploads *Uploads
	id      string
	path    string

	// held has one slot; the request that fills it owns every field below.
	held chan struct{}

	file  *os.File
	size  int64
	ended bool

	// direct is the session file opened with O_DIRECT, once ReadFrom used it.
	direct *os.File

	// sha256 covers the first hashed bytes of the file. When it falls behind size (a write
	// failed midway, or the session was reopened) Verify hashes the file again.
	sha256 hash.Hash
	hashed int64
}

func newUpload(uploads *Uploads, id, path string, file *os.File, size int64) *Upload {
	return &Upload{
		uploads: uploads,
		id:      id,
		path:    path,
		held:    make(chan struct{}, 1),
		file:    file,
		size:    size,
		sha256:  digest.SHA256.Hash(),
	}
}

// ID returns the session id.
func (u *Upload) ID() string { return u.id }

// Size returns the bytes stored so far.
func (u *Upload) Size() int64 { return u.size }

// Path returns the session file, valid until the session ends.
func (u *Upload) Path() string { return u.path }

// Write appends p to the session file.
func (u *Upload) Write(p []byte) (int, error) {
	n, err := u.file.Write(p)
	u.hashStored(p[:n])
	if err != nil {
		return n, fmt.Errorf("write upload %s: %w", u.id, err)
	}
	return n, nil
}

// Verify flushes the file to disk and checks that its bytes hash to expected, returning
// blobstore.ErrDigestMismatch otherwise.
func (u *Upload) Verify(expected digest.Digest) error {
	if err := blobstore.ValidateDigest(expected); err != nil {
		return err
	}
	if err := u.file.Sync(); err != nil {
		return fmt.Errorf("flush upload %s: %w", u.id, err)
	}

	actual, err := u.Digest(expected.Algorithm())
	if err != nil {
		return err
	}
	if actual != expected {
		return fmt.Errorf("upload %s of %d bytes has digest %s, not %s: %w", u.id, u.size, actual, expected, blobstore.ErrDigestMismatch)
	}
	return nil
}

// Digest returns the digest of the stored bytes. sha256 comes from the running hash when it
// covers every byte; other algorithms read the file again.
func (u *Upload) Digest(algorithm digest.Algorithm) (digest.Digest, error) {
	if algorithm == digest.SHA256 && u.hashed == u.size {
		return digest.NewDigest(digest.SHA256, u.sha256), nil
	}

	file, err := os.Open(u.path)
	if err != nil {
		return "", fmt.Errorf("read upload %s: %w", u.id, err)
	}
	defer file.Close()
	dgst, err := algorithm.FromReader(file)
	if err != nil {
		return "", fmt.Errorf("hash upload %s: %w", u.id, err)
	}
	return dgst, nil
}

// MoveTo renames the verified session file to path, syncing the file and the target folder,
// and ends the session. Both paths must be on one filesystem.
func (u *Upload) MoveTo(path string) error {
	if err := u.file.Sync(); err != nil {
		return fmt.Errorf("flush upload %s: %w", u.id, err)
	}
	u.closeDirect()
	if err := u.file.Close(); err != nil {
		return fmt.Errorf("close upload %s: %w", u.id, err)
	}

	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create blob folder %s: %w", dir, err)
	}
	if err := os.Rename(u.path, path); err != nil {
		return fmt.Errorf("move upload %s to %s: %w", u.id, path, err)
	}
	if err := syncDir(dir); err != nil {
		return err
	}

	u.end()
	return nil
}

// Cancel removes the session file and ends the session.
func (u *Upload) Cancel() error {
	u.closeDirect()
	u.file.Close()
	err := os.Remove(u.path)
	u.end()
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove upload %s: %w", u.id, err)
	}
	return nil
}

// Discard closes and removes the session file and ends the session; callers use it after the
// bytes were copied elsewhere.
func (u *Upload) Discard() error { return u.Cancel() }

// Close releases the caller's hold and keeps the session for Resume.
func (u *Upload) Close() error {
	if u.ended {
		return nil
	}
	<-u.held
	return nil
}

func (u *Upload) end() {
	u.ended = true
	u.uploads.forget(u.id)
	<-u.held
}

// OpenReader opens the session file for reading from its start.
func (u *Upload) OpenReader() (io.ReadSeekCloser, error) {
	file, err := os.Open(u.path)
	if err != nil {
		return nil, fmt.Errorf("read upload %s: %w", u.id, err)
	}
	return file, nil
}

func newUploadID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate upload id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// validUploadID accepts only ids that newUploadID makes, so an id from a URL can never name a
// path outside the upload folder.
func validUploadID(id string) bool {
	if len(id) != 32 {
		return false
	}
	for _, c := range id {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open folder %s to sync it: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync folder %s: %w", dir, err)
	}
	return nil
}
