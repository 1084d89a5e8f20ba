package runtime

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/bottle-dev/bottle/internal/ctr"
)

// teardownTimeout bounds every teardown, which runs even after the caller's ctx is done.
const teardownTimeout = 60 * time.Second

// undoStack records how to take back each step of a transaction; run takes them back in
// reverse order. Steps may be pushed from several goroutines.
type undoStack struct {
	mu    sync.Mutex
	steps []undoStep
}

type undoStep struct {
	what string
	fn   func(context.Context) error
}

func (u *undoStack) push(what string, fn func(context.Context) error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.steps = append(u.steps, undoStep{what, fn})
}

// run undoes every step on a context that outlives ctx's cancellation (Ctrl-C is what
// often brings us here) and returns the joined errors. When containerd does not answer,
// it stops there: a task may still run on the netns and behind the firewall of the
// steps before, and the record is what lets `bottle cleanup` find it all later.
func (u *undoStack) run(ctx context.Context, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), teardownTimeout)
	defer cancel()
	u.mu.Lock()
	steps := u.steps
	u.steps = nil
	u.mu.Unlock()
	var errs []error
	for i := len(steps) - 1; i >= 0; i-- {
		log.Debug("undo", "step", steps[i].what)
		if err := steps[i].fn(ctx); err != nil {
			errs = append(errs, err)
			if ctr.Unreachable(err) {
				log.Warn("containerd does not answer: leaving the rest for `bottle cleanup`", "steps", i)
				break
			}
		}
	}
	return errors.Join(errs...)
}

// parallel runs fn for every item at once and joins their errors.
func parallel[T any](items []T, fn func(T) error) error {
	errs := make([]error, len(items))
	var wg sync.WaitGroup
	for i, it := range items {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(it)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
