package batch_test

import (
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/require"
)

// rawOf returns the uncompressed columns of an encoded batch.
func rawOf(t testing.TB, encoded []byte) []byte {
	t.Helper()
	d, err := zstd.NewReader(nil)
	require.NoError(t, err)
	defer d.Close()
	raw, err := d.DecodeAll(encoded[4:], nil)
	require.NoError(t, err)
	return raw
}

// zstdFrame compresses raw as the codec does.
func zstdFrame(t testing.TB, raw []byte) []byte {
	t.Helper()
	e, err := zstd.NewWriter(nil)
	require.NoError(t, err)
	defer func() { require.NoError(t, e.Close()) }()
	return e.EncodeAll(raw, nil)
}

// fuzzFrame compresses raw with one encoder for the whole fuzz run.
var fuzzFrame = func() func(raw []byte) []byte {
	var once sync.Once
	var e *zstd.Encoder
	return func(raw []byte) []byte {
		once.Do(func() { e, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest)) })
		return e.EncodeAll(raw, nil)
	}
}()
