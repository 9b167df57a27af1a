package schema

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"slices"
	"strings"
	"sync"
)

// Pointer is the JSON Pointer (RFC 6901) of a property path: "/" before
// each segment, "~" written "~0" and "/" written "~1", so the key "a/b"
// and the key "b" inside "a" stay apart.
func Pointer(path []string) string {
	var b []byte
	for _, seg := range path {
		b = appendPointerSegment(b, seg)
	}
	return string(b)
}

// splitPointer is the segments of a JSON Pointer: the inverse of Pointer.
func splitPointer(p string) []string {
	if p == "" {
		return nil
	}
	segs := strings.Split(strings.TrimPrefix(p, "/"), "/")
	for i, s := range segs {
		segs[i] = pointerUnescaper.Replace(s)
	}
	return segs
}

var pointerUnescaper = strings.NewReplacer("~1", "/", "~0", "~")

// appendPointerSegment appends "/" and seg, escaped, to dst.
func appendPointerSegment[S string | []byte](dst []byte, seg S) []byte {
	dst = append(dst, '/')
	for i := 0; i < len(seg); i++ {
		switch c := seg[i]; c {
		case '~':
			dst = append(dst, '~', '0')
		case '/':
			dst = append(dst, '~', '1')
		default:
			dst = append(dst, c)
		}
	}
	return dst
}

// ColumnName is the typed column of a property path: "p_" and the path's
// segments, each made snake_case ASCII, joined with "_". The prefix keeps a
// property from ever taking a base column's name (ts, tenant, _conflicts)
// and from starting with a digit. Joining with "_", never ".", keeps
// ClickHouse from grouping the columns into Nested ones.
//
// Names are at most MaxNameLen bytes: a longer one keeps its first bytes and
// ends with a hash of the whole path, so two long paths do not meet.
func ColumnName(path []string) string {
	segs := make([]string, len(path))
	for i, seg := range path {
		segs[i] = nameSegment(seg)
	}
	return fitName("p_"+strings.Join(segs, "_"), path)
}

// contextName names a promoted Segment context field: "context_" and its
// path below /_segment/context (context_page_url, context_user_agent), the
// names Segment's own warehouses give these fields.
func contextName(underContext []string) string {
	segs := make([]string, len(underContext))
	for i, seg := range underContext {
		segs[i] = nameSegment(seg)
	}
	return fitName("context_"+strings.Join(segs, "_"), underContext)
}

// fitName cuts a name longer than MaxNameLen to its first bytes, "_" and
// the first 8 hex digits of the SHA-256 of path joined with NUL bytes.
func fitName(name string, path []string) string {
	if len(name) <= MaxNameLen {
		return name
	}
	return name[:MaxNameLen-9] + "_" + shortHash(strings.Join(path, "\x00"))
}

// nameSegment is one segment of a column name: non-ASCII segments become
// "u" and a hash (Unicode names would need quoting in every query and make
// escaped file names on 18.16), camelCase becomes snake_case, anything but
// a-z and 0-9 becomes "_", and a segment left empty becomes "k" and a hash.
func nameSegment(seg string) string {
	for i := 0; i < len(seg); i++ {
		if seg[i] >= 0x80 {
			return "u" + shortHash(seg)
		}
	}
	out := make([]byte, 0, len(seg)+4)
	for i := 0; i < len(seg); i++ {
		c := seg[i]
		if isUpper(c) && startsWord(seg, i) {
			out = append(out, '_')
		}
		switch {
		case isUpper(c):
			out = append(out, c+('a'-'A'))
		case isLower(c) || isDigit(c):
			out = append(out, c)
		default:
			out = append(out, '_')
		}
	}
	if s := collapseUnderscores(out); s != "" {
		return s
	}
	return "k" + shortHash(seg)
}

// startsWord reports whether the capital at seg[i] begins a word: after a
// lower-case letter or digit (userID: user|ID), or as the last capital of a
// run followed by a lower-case letter (HTTPServer: HTTP|Server).
func startsWord(seg string, i int) bool {
	if i == 0 {
		return false
	}
	prev := seg[i-1]
	if isLower(prev) || isDigit(prev) {
		return true
	}
	return isUpper(prev) && i+1 < len(seg) && isLower(seg[i+1])
}

// collapseUnderscores drops leading and trailing "_" and keeps one of each
// run.
func collapseUnderscores(b []byte) string {
	out := b[:0]
	for _, c := range b {
		if c == '_' && (len(out) == 0 || out[len(out)-1] == '_') {
			continue
		}
		out = append(out, c)
	}
	return strings.TrimSuffix(string(out), "_")
}

func shortHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:4])
}

func isUpper(c byte) bool { return c >= 'A' && c <= 'Z' }
func isLower(c byte) bool { return c >= 'a' && c <= 'z' }
func isDigit(c byte) bool { return c >= '0' && c <= '9' }

var contextColumnName = regexp.MustCompile(`^context_[a-z0-9_]+$`)

// validColumn reports whether name may be a typed column this package
// names: a property column (ValidName) or a promoted Segment context field.
func validColumn(name string) bool {
	return ValidName(name) || (len(name) <= MaxNameLen && contextColumnName.MatchString(name))
}

// segmentKey is the property under which ingest keeps the fields of a
// Segment message that are not properties (context, integrations...).
const segmentKey = "_segment"

// contextFields is the tree of the fields below /_segment/context that are
// promoted: the ones analyses group by. A nil subtree is a leaf: its value
// is one column whatever it holds. Nothing else below /_segment is
// promoted or listed as unpromoted: it is Segment's envelope, not the
// user's properties, and it stays in properties.
var contextFields = segmentTree{
	"page":      leaves("url", "path", "referrer", "title", "search"),
	"userAgent": nil,
	"ip":        nil,
	"locale":    nil,
	"timezone":  nil,
	"library":   leaves("name", "version"),
	"os":        leaves("name", "version"),
	"device":    leaves("type", "model", "manufacturer", "id"),
	"campaign":  leaves("name", "source", "medium", "term", "content"),
	"app":       leaves("name", "version"),
}

// segmentFields is the tree from /_segment down.
var segmentFields = segmentTree{"context": contextFields}

// segmentTree lists the keys followed below /_segment: a key missing from
// it is skipped with its subtree.
type segmentTree map[string]segmentTree

func leaves(keys ...string) segmentTree {
	t := make(segmentTree, len(keys))
	for _, k := range keys {
		t[k] = nil
	}
	return t
}

// pathFacts is what follows from a path alone.
type pathFacts struct {
	name   string
	denied bool // the path or one above it matches a deny pattern
}

// pathFacts works out the facts of keys[i], whose parent's are known.
func (p *Projector) pathFacts(keys []key, i int) pathFacts {
	k := &keys[i]
	var path []string
	for at := int32(i); at >= 0; at = keys[at].parent {
		if k.context && !keys[at].context { // /_segment/context: names start below
			break
		}
		path = append(path, keys[at].seg)
	}
	slices.Reverse(path)
	if k.context {
		return pathFacts{name: contextName(path)}
	}
	denied := p.deniedSegment(k.seg) || (k.parent >= 0 && keys[k.parent].denied)
	return pathFacts{name: ColumnName(path), denied: denied}
}

// pathCacheSize bounds the paths a pathCache remembers: beyond it, a key
// explosion would hold memory for keys never seen again.
const pathCacheSize = 1 << 16

// pathCache remembers the facts of the paths batches saw, by pointer:
// most batches have the paths the ones before had, and hashing names and
// matching deny patterns is much of the cost of a new path. Safe for
// concurrent use.
type pathCache struct {
	mu    sync.RWMutex
	facts map[string]pathFacts
}

// resolve fills in the name and denied of every key, from the cache or by
// work (parents come before their members in keys).
func (c *pathCache) resolve(keys []key, work func(keys []key, i int) pathFacts) {
	var missed []int
	c.mu.RLock()
	for i := range keys {
		f, ok := c.facts[keys[i].pointer]
		if !ok {
			missed = append(missed, i)
		}
		keys[i].name, keys[i].denied = f.name, f.denied
	}
	c.mu.RUnlock()
	for _, i := range missed {
		f := work(keys, i)
		keys[i].name, keys[i].denied = f.name, f.denied
	}
	if len(missed) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.facts == nil || len(c.facts)+len(missed) > pathCacheSize {
		c.facts = make(map[string]pathFacts, min(len(missed), pathCacheSize))
	}
	for _, i := range missed[:min(len(missed), pathCacheSize)] {
		c.facts[keys[i].pointer] = pathFacts{name: keys[i].name, denied: keys[i].denied}
	}
}
