package push

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestUploadGroupSharesOneUpload(t *testing.T) {
	g := NewUploadGroup()
	var uploads atomic.Int32
	release := make(chan struct{})
	var wg sync.WaitGroup
	results := make([]bool, 5)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			uploaded, err := g.do(context.Background(), "reg/repo@sha256:x", func() error {
				uploads.Add(1)
				<-release
				return nil
			})
			if err != nil {
				t.Error(err)
			}
			results[i] = uploaded
		}()
	}
	time.Sleep(50 * time.Millisecond)
	close(release)
	wg.Wait()
	if n := uploads.Load(); n != 1 {
		t.Errorf("%d uploads ran, want 1", n)
	}
}

func TestUploadGroupWaiterHonoursContext(t *testing.T) {
	g := NewUploadGroup()
	release := make(chan struct{})
	defer close(release)
	go g.do(context.Background(), "k", func() error { <-release; return nil })
	time.Sleep(20 * time.Millisecond)

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := g.do(ctx, "k", func() error { return nil })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("waiter returned %v, want the context's deadline error", err)
	}
}

func TestUploadGroupRetriesAfterFailure(t *testing.T) {
	g := NewUploadGroup()
	started := make(chan struct{})
	release := make(chan struct{})
	go g.do(context.Background(), "k", func() error {
		close(started)
		<-release
		return errors.New("registry down")
	})
	<-started
	done := make(chan bool)
	go func() {
		uploaded, err := g.do(context.Background(), "k", func() error { return nil })
		if err != nil {
			t.Error(err)
		}
		done <- uploaded
	}()
	time.Sleep(20 * time.Millisecond)
	close(release)
	if uploaded := <-done; !uploaded {
		t.Error("after the first upload failed, the waiter did not upload itself")
	}
}

func TestChunkSize(t *testing.T) {
	cases := []struct {
		requested, announced, want int64
	}{
		{0, 0, 0},
		{1 << 20, 0, 1 << 20},
		{1 << 20, 5 << 20, 5 << 20},
		{0, 5 << 20, 64 << 20},
		{0, 100 << 20, 100 << 20},
	}
	for _, tc := range cases {
		if got := chunkSize(tc.requested, tc.announced); got != tc.want {
			t.Errorf("chunkSize(%d, %d) = %d, want %d", tc.requested, tc.announced, got, tc.want)
		}
	}
}
