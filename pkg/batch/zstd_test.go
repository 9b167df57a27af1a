package batch_test

import (
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/require"
)

// rawOf returns the uncompressed columns of an encoded batch.
func rawOf(t *testing.T, encoded []byte) []byte {
	t.Helper()
	d, err := zstd.NewReader(nil)
	require.NoError(t, err)
	defer d.Close()
	raw, err := d.DecodeAll(encoded[4:], nil)
	require.NoError(t, err)
	return raw
}

// zstdFrame compresses raw as the codec does.
func zstdFrame(t *testing.T, raw []byte) []byte {
	t.Helper()
	e, err := zstd.NewWriter(nil)
	require.NoError(t, err)
	defer func() { require.NoError(t, e.Close()) }()
	return e.EncodeAll(raw, nil)
}
