package ingest

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestValidateAdminKey(t *testing.T) {
	cases := []struct {
		name, key string
		apiKeys   map[string]string
		wantErr   string
	}{
		{name: "off", key: ""},
		{name: "long enough", key: "0123456789abcdef"},
		{name: "short", key: "short", wantErr: "at least 16"},
		{name: "a tenant's key", key: "0123456789abcdef", apiKeys: map[string]string{"0123456789abcdef": "acme"}, wantErr: "tenant's API key"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := Settings{AdminKey: c.key, APIKeys: c.apiKeys}.validateAdminKey()
			if c.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, c.wantErr)
		})
	}
}
