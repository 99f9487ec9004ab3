package soak

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
)

// The load registers customers while other calls pick one to order or top
// up for: under the race detector, picking must not read the list of
// buyers unguarded.
func TestBuyersGrowWhileOrdersPickThem(t *testing.T) {
	d := &driver{buyers: []string{"first"}}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := range 2000 {
			d.addBuyer(fmt.Sprint(i))
		}
	}()
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(1, 2))
		for range 2000 {
			if d.buyer(rng) == "" {
				t.Error("picked an empty buyer")
				return
			}
		}
	}()
	wg.Wait()
	if len(d.buyers) != 2001 {
		t.Fatalf("%d buyers, want 2001", len(d.buyers))
	}
}
