package push

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Progress receives the state of each blob upload.
type Progress interface {
	// Start is called when an upload of desc to destination begins and returns the
	// tracker that receives its byte counts.
	Start(destination string, desc ocispec.Descriptor) Tracker
}

// Tracker follows one upload.
type Tracker interface {
	// Poll sets a function that returns the bytes sent so far; it replaces counting
	// where the bytes bypass img, as with sendfile(2).
	Poll(func() int64)
	// Add counts n more bytes sent.
	Add(n int64)
	// Done ends the upload with an outcome word ("pushed", "shared") and err, which is
	// nil on success.
	Done(outcome string, err error)
}

type nopProgress struct{}

func (nopProgress) Start(string, ocispec.Descriptor) Tracker { return nopTracker{} }

type nopTracker struct{}

func (nopTracker) Poll(func() int64)  {}
func (nopTracker) Add(int64)          {}
func (nopTracker) Done(string, error) {}

// countingReader counts the bytes read through it into a tracker.
type countingReader struct {
	r       io.Reader
	tracker Tracker
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.tracker.Add(int64(n))
	return n, err
}

// filePosition returns the current offset of f, which sendfile(2) advances. After f is
// closed it keeps returning the last offset it read.
func filePosition(f *os.File) func() int64 {
	var last atomic.Int64
	return func() int64 {
		if pos, err := f.Seek(0, io.SeekCurrent); err == nil {
			last.Store(pos)
		}
		return last.Load()
	}
}

// LineProgress prints one line per finished blob: the plain output for logs and pipes.
type LineProgress struct {
	W  io.Writer
	mu sync.Mutex
}

// Start implements Progress.
func (p *LineProgress) Start(destination string, desc ocispec.Descriptor) Tracker {
	return &lineTracker{progress: p, destination: destination, desc: desc, started: time.Now()}
}

type lineTracker struct {
	progress    *LineProgress
	destination string
	desc        ocispec.Descriptor
	started     time.Time
}

func (t *lineTracker) Poll(func() int64) {}
func (t *lineTracker) Add(int64)         {}
func (t *lineTracker) Done(outcome string, err error) {
	if err != nil {
		return
	}
	elapsed := time.Since(t.started)
	t.progress.mu.Lock()
	defer t.progress.mu.Unlock()
	fmt.Fprintf(t.progress.W, "%s %s %s %s in %s (%s)\n", outcome, shortDigest(t.desc), formatBytes(t.desc.Size), t.destination, elapsed.Round(time.Millisecond), formatRate(t.desc.Size, elapsed))
}

// TerminalProgress redraws one line per active upload with bytes and rate, for a TTY.
type TerminalProgress struct {
	W io.Writer

	mu      sync.Mutex
	active  []*terminalTracker
	drawn   int
	stop    chan struct{}
	stopped chan struct{}
}

// Start implements Progress.
func (p *TerminalProgress) Start(destination string, desc ocispec.Descriptor) Tracker {
	t := &terminalTracker{progress: p, destination: destination, desc: desc, started: time.Now()}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stop == nil {
		p.stop, p.stopped = make(chan struct{}), make(chan struct{})
		go p.loop()
	}
	p.active = append(p.active, t)
	return t
}

// Close stops redrawing and leaves the finished lines on screen. Calling it again does
// nothing.
func (p *TerminalProgress) Close() {
	p.mu.Lock()
	stop := p.stop
	p.stop = nil
	p.mu.Unlock()
	if stop == nil {
		return
	}
	close(stop)
	<-p.stopped
}

func (p *TerminalProgress) loop() {
	defer close(p.stopped)
	ticker := time.NewTicker(200 * time.Millisecond)
	defer ticker.Stop()
	for {
		select {
		case <-p.stop:
			p.redraw()
			return
		case <-ticker.C:
			p.redraw()
		}
	}
}

func (p *TerminalProgress) redraw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	var finished, still []*terminalTracker
	for _, t := range p.active {
		if t.finished.Load() {
			finished = append(finished, t)
		} else {
			still = append(still, t)
		}
	}

	// Finished lines go first and then scroll up for good; only the active lines below
	// them are redrawn next time.
	var b strings.Builder
	if p.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", p.drawn)
	}
	for _, t := range append(finished, still...) {
		fmt.Fprintf(&b, "\r\x1b[K%s\n", t.line())
	}
	io.WriteString(p.W, b.String())
	p.drawn = len(still)
	p.active = still
}

type terminalTracker struct {
	progress    *TerminalProgress
	destination string
	desc        ocispec.Descriptor
	started     time.Time
	sent        atomic.Int64
	poll        atomic.Pointer[func() int64]
	finished    atomic.Bool
	outcome     atomic.Pointer[string]
}

func (t *terminalTracker) Poll(f func() int64) { t.poll.Store(&f) }
func (t *terminalTracker) Add(n int64)         { t.sent.Add(n) }
func (t *terminalTracker) Done(outcome string, err error) {
	if err != nil {
		outcome = "failed"
	}
	t.outcome.Store(&outcome)
	t.finished.Store(true)
}

func (t *terminalTracker) line() string {
	sent := t.sent.Load()
	if poll := t.poll.Load(); poll != nil {
		sent = (*poll)()
	}
	elapsed := time.Since(t.started)
	if outcome := t.outcome.Load(); outcome != nil {
		return fmt.Sprintf("%-9s %s %9s %s", *outcome, shortDigest(t.desc), formatBytes(t.desc.Size), t.destination)
	}
	return fmt.Sprintf("%-9s %s %9s / %-9s %10s %s", "pushing", shortDigest(t.desc), formatBytes(sent), formatBytes(t.desc.Size), formatRate(sent, elapsed), t.destination)
}

func shortDigest(desc ocispec.Descriptor) string {
	s := desc.Digest.String()
	if len(s) > 19 {
		return s[:19]
	}
	return s
}

func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func formatRate(n int64, elapsed time.Duration) string {
	if elapsed <= 0 {
		return "-"
	}
	return formatBytes(int64(float64(n)/elapsed.Seconds())) + "/s"
}
