package main

import (
	"fmt"
	"os"
	"slices"
	"syscall"
	"time"
)

// syncProbe measures what any durable acknowledgement costs on this disk at the moment: it
// overwrites one 4 KiB block of a file in the scratch folder and fdatasyncs it, every
// interval, until stop closes. img bes syncs a new push job to its log this way before it
// acknowledges the event that created the job, so the probe's latency is a floor under the
// acknowledgement latency of those events.
type syncProbe struct {
	latencies []time.Duration
	err       error
	done      chan struct{}
}

func startSyncProbe(path string, interval time.Duration, stop <-chan struct{}) *syncProbe {
	p := &syncProbe{done: make(chan struct{})}
	go func() {
		defer close(p.done)
		p.err = p.run(path, interval, stop)
	}()
	return p
}

func (p *syncProbe) run(path string, interval time.Duration, stop <-chan struct{}) error {
	file, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer os.Remove(path)
	defer file.Close()

	// The block is written and synced once first, so every measured sync overwrites
	// allocated space and needs no metadata change.
	block := make([]byte, 4096)
	if _, err := file.WriteAt(block, 0); err != nil {
		return err
	}
	if err := file.Sync(); err != nil {
		return err
	}

	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for i := 0; ; i++ {
		select {
		case <-stop:
			return nil
		case <-ticker.C:
		}
		block[0] = byte(i)
		start := time.Now()
		if _, err := file.WriteAt(block, 0); err != nil {
			return err
		}
		if err := syscall.Fdatasync(int(file.Fd())); err != nil {
			return fmt.Errorf("fdatasync %s: %w", path, err)
		}
		p.latencies = append(p.latencies, time.Since(start))
	}
}

// wait returns the sorted latencies once the probe has stopped.
func (p *syncProbe) wait() ([]time.Duration, error) {
	<-p.done
	slices.Sort(p.latencies)
	return p.latencies, p.err
}
