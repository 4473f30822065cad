package bes

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// jobLog is the write-ahead log of new push jobs: a file of fixed size, filled with zeros
// when created, into which records are written in order from the start, each group with
// one fdatasync.
//
// The log exists for the latency of that fdatasync. Every write overwrites blocks that the
// file already has and leaves its size alone. So the sync only writes those blocks and
// flushes the disk cache: it records no block allocation, and on a journaling filesystem it
// needs no journal commit, which would wait for the writeback of other files. A bbolt
// commit needs two syncs, and block allocations as its file grows.
//
// When the log starts over, from offset 0 with the next generation, every record in it must
// already be in the job database. A record is
//
//	length uint32 | crc32c(generation, payload) uint32 | generation uint64 | payload
//
// and reading stops at the first record that is empty, torn or of another generation than
// the first one, which is where the last completed write ended.
type jobLog struct {
	file       *os.File
	path       string
	capacity   int64
	generation uint64
	// end is the offset of the next record.
	end int64
	// unsynced is set by an append that did not sync.
	unsynced atomic.Bool
	// syncSeconds, when set, observes the duration of every sync.
	syncSeconds prometheus.Observer
}

const jobLogHeader = 16

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// openJobLog opens or creates the log at path with at least capacity bytes and returns
// it with the payloads of its records. The caller applies them and then calls restart.
func openJobLog(path string, capacity int64) (*jobLog, [][]byte, error) {
	file, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("open job log %s: %w", path, err)
	}
	log := &jobLog{file: file, path: path}
	if err := log.fill(capacity); err != nil {
		file.Close()
		return nil, nil, err
	}
	records, err := log.read()
	if err != nil {
		file.Close()
		return nil, nil, err
	}
	return log, records, nil
}

// fill extends the file with written zeros to capacity bytes. Zeros written, not a hole
// from ftruncate, so that later records overwrite allocated blocks.
func (l *jobLog) fill(capacity int64) error {
	info, err := l.file.Stat()
	if err != nil {
		return fmt.Errorf("open job log %s: %w", l.path, err)
	}
	l.capacity = max(info.Size(), capacity)
	if info.Size() >= capacity {
		return nil
	}
	zeros := make([]byte, 1<<20)
	for offset := info.Size(); offset < capacity; offset += int64(len(zeros)) {
		if _, err := l.file.WriteAt(zeros[:min(int64(len(zeros)), capacity-offset)], offset); err != nil {
			return fmt.Errorf("fill job log %s with zeros: %w", l.path, err)
		}
	}
	if err := l.file.Sync(); err != nil {
		return fmt.Errorf("fill job log %s with zeros: %w", l.path, err)
	}
	return nil
}

// read returns the payloads of the records of the log's generation, which the first
// record names, and sets the generation.
func (l *jobLog) read() ([][]byte, error) {
	var records [][]byte
	header := make([]byte, jobLogHeader)
	offset := int64(0)
	for offset+jobLogHeader <= l.capacity {
		if _, err := l.file.ReadAt(header, offset); err != nil {
			return nil, fmt.Errorf("read job log %s at byte %d: %w", l.path, offset, err)
		}
		length := int64(binary.LittleEndian.Uint32(header[0:]))
		sum := binary.LittleEndian.Uint32(header[4:])
		generation := binary.LittleEndian.Uint64(header[8:])
		if length == 0 || offset+jobLogHeader+length > l.capacity {
			break
		}
		if offset == 0 {
			l.generation = generation
		}
		if generation != l.generation {
			break
		}
		payload := make([]byte, length)
		if _, err := l.file.ReadAt(payload, offset+jobLogHeader); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("read job log %s at byte %d: %w", l.path, offset, err)
		}
		if recordSum(generation, payload) != sum {
			break
		}
		records = append(records, payload)
		offset += jobLogHeader + length
	}
	l.end = offset
	return records, nil
}

func recordSum(generation uint64, payload []byte) uint32 {
	var prefix [8]byte
	binary.LittleEndian.PutUint64(prefix[:], generation)
	return crc32.Update(crc32.Checksum(prefix[:], castagnoli), castagnoli, payload)
}

// recordsSize returns the bytes that payloads take in the log.
func recordsSize(payloads [][]byte) int64 {
	total := int64(0)
	for _, payload := range payloads {
		total += jobLogHeader + int64(len(payload))
	}
	return total
}

// fits reports whether payloads fit after the last record.
func (l *jobLog) fits(payloads [][]byte) bool {
	return l.end+recordsSize(payloads) <= l.capacity
}

// fitsEmpty reports whether payloads fit into the log at all.
func (l *jobLog) fitsEmpty(payloads [][]byte) bool {
	return recordsSize(payloads) <= l.capacity
}

// restart makes the next record the first of a new generation, at offset 0. The caller
// makes sure first that every record so far is in the job database: a crash before the
// next write leaves the old records readable, and applying them again changes nothing.
func (l *jobLog) restart() {
	l.generation++
	l.end = 0
}

// append writes payloads after the last record in one write and, with sync, syncs it. The
// caller checks fits first. On failure the log ends where it ended before.
func (l *jobLog) append(payloads [][]byte, sync bool) error {
	buffer := make([]byte, 0, recordsSize(payloads))
	for _, payload := range payloads {
		buffer = binary.LittleEndian.AppendUint32(buffer, uint32(len(payload)))
		buffer = binary.LittleEndian.AppendUint32(buffer, recordSum(l.generation, payload))
		buffer = binary.LittleEndian.AppendUint64(buffer, l.generation)
		buffer = append(buffer, payload...)
	}
	if _, err := l.file.WriteAt(buffer, l.end); err != nil {
		return fmt.Errorf("write job log %s: %w", l.path, err)
	}
	if sync {
		if err := l.sync(); err != nil {
			return err
		}
	} else {
		l.unsynced.Store(true)
	}
	l.end += int64(len(buffer))
	return nil
}

// syncIfWritten syncs the log if an append since the last sync did not.
func (l *jobLog) syncIfWritten() error {
	if !l.unsynced.Swap(false) {
		return nil
	}
	err := l.sync()
	if err != nil {
		l.unsynced.Store(true) // the next call tries again
	}
	return err
}

func (l *jobLog) sync() error {
	start := time.Now()
	if err := fdatasync(l.file); err != nil {
		return fmt.Errorf("sync job log %s: %w", l.path, err)
	}
	if l.syncSeconds != nil {
		l.syncSeconds.Observe(time.Since(start).Seconds())
	}
	return nil
}

func (l *jobLog) Close() error {
	return l.file.Close()
}
