package bench

import (
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestHistIndexRoundTrip(t *testing.T) {
	// Every value lies in the bucket whose highest value is >= it, and
	// buckets are contiguous and increasing.
	prev := -1
	for _, v := range []uint64{0, 1, 127, 128, 255, 256, 257, 383, 384, 511, 512, 1000, 1 << 20, 1<<20 + 12345, 1 << 40, 1<<63 - 1, 1 << 63, ^uint64(0)} {
		i := histIndex(v)
		if i < prev {
			t.Fatalf("index(%d) = %d < previous %d", v, i, prev)
		}
		prev = i
		if i >= histBuckets {
			t.Fatalf("index(%d) = %d out of range", v, i)
		}
		if h := histHighest(i); h < v {
			t.Fatalf("highest(index(%d)) = %d < value", v, h)
		}
		if i > 0 && histHighest(i-1) >= v {
			t.Fatalf("value %d also fits bucket %d", v, i-1)
		}
	}
	for i := 1; i < histBuckets; i++ {
		if histIndex(histHighest(i-1)+1) != i {
			t.Fatalf("bucket %d does not start right after bucket %d", i, i-1)
		}
	}
}

func TestHistogramExactSmallValues(t *testing.T) {
	var h Histogram
	for v := 1; v <= 100; v++ {
		h.Record(time.Duration(v))
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.01, 1}, {0.5, 50}, {0.9, 90}, {0.99, 99}, {1, 100}, {0, 1}} {
		if got := h.Quantile(c.q); got != c.want {
			t.Errorf("Quantile(%v) = %v, want %v", c.q, got, c.want)
		}
	}
	if h.Count() != 100 || h.Min() != 1 || h.Max() != 100 || h.Mean() != 50 {
		t.Errorf("count %d min %v max %v mean %v", h.Count(), h.Min(), h.Max(), h.Mean())
	}
}

func TestHistogramQuantilesWithinResolution(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var h Histogram
	vals := make([]time.Duration, 100_000)
	for i := range vals {
		// Log-uniform from 1 µs to 10 s.
		v := time.Duration(1e3 * math.Pow(10, rng.Float64()*7))
		vals[i] = v
		h.Record(v)
	}
	slices.Sort(vals)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		want := vals[int(q*float64(len(vals)))-1]
		got := h.Quantile(q)
		if rel := float64(got-want) / float64(want); rel < 0 || rel > 1.0/128 {
			t.Errorf("Quantile(%v) = %v, exact %v (relative error %.4f)", q, got, want, rel)
		}
	}
	if h.Max() != vals[len(vals)-1] || h.Min() != vals[0] {
		t.Errorf("max %v min %v, want %v %v", h.Max(), h.Min(), vals[len(vals)-1], vals[0])
	}
}

func TestHistogramEmptyAndNegative(t *testing.T) {
	var h Histogram
	if h.Quantile(0.5) != 0 || h.Summarize() != nil {
		t.Fatal("empty histogram should report nothing")
	}
	h.Record(-5 * time.Millisecond)
	if h.Max() != 0 || h.Count() != 1 {
		t.Fatalf("negative value: max %v count %d", h.Max(), h.Count())
	}
}

func TestHistogramConcurrentAndMerge(t *testing.T) {
	var a, b Histogram
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 1; i <= 1000; i++ {
				a.Record(time.Duration(i) * time.Microsecond)
			}
		}()
	}
	wg.Wait()
	b.Record(time.Hour)
	b.Merge(&a)
	if b.Count() != 8001 || b.Max() != time.Hour || b.Min() != time.Microsecond {
		t.Fatalf("merged: count %d max %v min %v", b.Count(), b.Max(), b.Min())
	}
	s := b.Summarize()
	if s.P50 < 0.49 || s.P50 > 0.51 {
		t.Fatalf("p50 %.3f ms, want ~0.5", s.P50)
	}
	if s.Max != float64(time.Hour/time.Millisecond) {
		t.Fatalf("max %v", s.Max)
	}
}
