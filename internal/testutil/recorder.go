package testutil

import (
	"sync"
	"testing"
	"time"

	"github.com/bottle-dev/bottle/internal/audit"
)

// Recorder is an audit.Recorder that keeps what it is given (tests of the sidecars'
// records).
type Recorder struct {
	mu     sync.Mutex
	events []audit.Event
}

// Record implements audit.Recorder.
func (r *Recorder) Record(e audit.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

// Wait returns the records once there are n (a sidecar records when a connection ends,
// which may be after the client has its answer), failing the test if there are more or,
// after 5 s, fewer.
func (r *Recorder) Wait(t testing.TB, n int) []audit.Event {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r.mu.Lock()
		got := append([]audit.Event(nil), r.events...)
		r.mu.Unlock()
		if len(got) >= n || time.Now().After(deadline) {
			if len(got) != n {
				t.Fatalf("%d audit records, want %d: %+v", len(got), n, got)
			}
			return got
		}
		time.Sleep(10 * time.Millisecond)
	}
}
