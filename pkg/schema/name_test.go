package schema

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestPointer(t *testing.T) {
	tests := []struct {
		name string
		path []string
		want string
	}{
		{"empty", nil, ""},
		{"one key", []string{"plan"}, "/plan"},
		{"nested", []string{"context", "page", "url"}, "/context/page/url"},
		{"dot stays", []string{"a.b"}, "/a.b"},
		{"slash and tilde escaped", []string{"a/b", "c~d"}, "/a~1b/c~0d"},
		{"tilde before one", []string{"~1"}, "/~01"},
		{"empty key", []string{""}, "/"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, Pointer(tt.path))
			require.Equal(t, tt.path, splitPointer(tt.want))
		})
	}
}

func TestColumnName(t *testing.T) {
	tests := []struct {
		name string
		path []string
		want string
	}{
		{"plain", []string{"plan"}, "p_plan"},
		{"nested", []string{"a", "b"}, "p_a_b"},
		{"dot", []string{"a.b"}, "p_a_b"},
		{"space", []string{"first name"}, "p_first_name"},
		{"camel with initialism", []string{"userID"}, "p_user_id"},
		{"pascal", []string{"UserId"}, "p_user_id"},
		{"initialism then word", []string{"HTTPServer"}, "p_http_server"},
		{"digits", []string{"item2Price"}, "p_item2_price"},
		{"runs collapse, ends trimmed", []string{"__a--b__"}, "p_a_b"},
		{"reserved base column", []string{"_conflicts"}, "p_conflicts"},
		{"leading digit", []string{"1st"}, "p_1st"},
		{"cyrillic", []string{"Странное Имя"}, "p_ue3bd2767"},
		{"cyrillic 200", []string{strings.Repeat("я", 200)}, "p_ua7036d03"},
		{"one non-ASCII letter hashes the segment", []string{"café", "x"}, "p_u" + shortHash("café") + "_x"},
		{"nothing left", []string{"!!!"}, "p_k" + shortHash("!!!")},
		{"empty key", []string{""}, "p_k" + shortHash("")},
		{"300 k", []string{strings.Repeat("k", 300)}, "p_" + strings.Repeat("k", 53) + "_17b16d8e"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ColumnName(tt.path)
			require.Equal(t, tt.want, got)
			require.True(t, ValidName(got), got)
		})
	}
}

func TestColumnNameLongPathsStayApart(t *testing.T) {
	long := strings.Repeat("segment", 10)
	a := ColumnName([]string{long, "a"})
	b := ColumnName([]string{long, "b"})
	require.Len(t, a, MaxNameLen)
	require.Len(t, b, MaxNameLen)
	require.NotEqual(t, a, b)
	require.Equal(t, a[:55]+"_"+shortHash(long+"\x00a"), a)
	require.Len(t, ColumnName([]string{strings.Repeat("k", 300)}), MaxNameLen)
}

func TestContextName(t *testing.T) {
	tests := []struct {
		path []string
		want string
	}{
		{[]string{"page", "url"}, "context_page_url"},
		{[]string{"userAgent"}, "context_user_agent"},
		{[]string{"device", "id"}, "context_device_id"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			got := contextName(tt.path)
			require.Equal(t, tt.want, got)
			require.True(t, validColumn(got))
			require.False(t, ValidName(got), "ValidName stays for declared names")
		})
	}
}
