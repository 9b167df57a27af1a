package deploy

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// markdownLink is the target of an inline link or image, [text](target) or
// ![alt](target), up to a space (a title) or the closing parenthesis.
var markdownLink = regexp.MustCompile(`\]\(([^)\s]+)`)

// inlineCode is a code span, whose brackets are not links.
var inlineCode = regexp.MustCompile("`[^`]*`")

// markdownDoc is what the link check needs of a Markdown file: the anchors
// of its headings and the targets of its links, both outside code blocks.
type markdownDoc struct {
	anchors map[string]bool
	links   []string
}

// readMarkdown reads the Markdown file at path.
func readMarkdown(t *testing.T, path string) markdownDoc {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	doc := markdownDoc{anchors: make(map[string]bool)}
	seen := make(map[string]int)
	fence := false
	for line := range strings.SplitSeq(string(data), "\n") {
		if strings.HasPrefix(line, "```") {
			fence = !fence
			continue
		}
		if fence {
			continue
		}
		if title, ok := headingTitle(line); ok {
			a := headingAnchor(title)
			if n := seen[a]; n > 0 {
				doc.anchors[a+"-"+strconv.Itoa(n)] = true
			} else {
				doc.anchors[a] = true
			}
			seen[a]++
		}
		for _, m := range markdownLink.FindAllStringSubmatch(inlineCode.ReplaceAllString(line, ""), -1) {
			doc.links = append(doc.links, m[1])
		}
	}
	return doc
}

// headingTitle is the text of an ATX heading line (# to ######).
func headingTitle(line string) (string, bool) {
	hashes := len(line) - len(strings.TrimLeft(line, "#"))
	if hashes == 0 || hashes > 6 || !strings.HasPrefix(line[hashes:], " ") {
		return "", false
	}
	return strings.TrimSpace(line[hashes:]), true
}

// notInAnchor is what GitHub drops from a heading to make its anchor.
var notInAnchor = regexp.MustCompile(`[^\p{L}\p{N}_\- ]`)

// headingAnchor is the anchor GitHub gives a heading: lower case, without
// punctuation other than - and _, spaces as hyphens ("Seeing the state:
// `surge status`" is seeing-the-state-surge-status).
func headingAnchor(title string) string {
	return strings.ReplaceAll(notInAnchor.ReplaceAllString(strings.ToLower(title), ""), " ", "-")
}

func TestHeadingAnchor(t *testing.T) {
	tests := []struct{ title, anchor string }{
		{"Seeing the state: `surge status`", "seeing-the-state-surge-status"},
		{"Conflicts: `_conflicts`", "conflicts-_conflicts"},
		{"Streams (pkg/streams)", "streams-pkgstreams"},
		{"Traces, metrics and logs", "traces-metrics-and-logs"},
		{"The local stack: `go tool task up`", "the-local-stack-go-tool-task-up"},
	}
	for _, tt := range tests {
		t.Run(tt.title, func(t *testing.T) {
			require.Equal(t, tt.anchor, headingAnchor(tt.title))
		})
	}
}

// Every relative link of README.md and docs/*.md leads to a file of the
// repository and, with an #anchor into a Markdown file, to one of its
// headings, so moving a section cannot leave a link behind.
func TestDocsLinks(t *testing.T) {
	pages, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	require.NoError(t, err)
	require.NotEmpty(t, pages)
	pages = append([]string{filepath.Join(root, "README.md")}, pages...)
	docs := make(map[string]markdownDoc)
	doc := func(path string) markdownDoc {
		d, ok := docs[path]
		if !ok {
			d = readMarkdown(t, path)
			docs[path] = d
		}
		return d
	}
	links := 0
	for _, page := range pages {
		name, err := filepath.Rel(root, page)
		require.NoError(t, err)
		for _, link := range doc(page).links {
			if strings.Contains(link, "://") || strings.HasPrefix(link, "mailto:") {
				continue // not a file of the repository
			}
			links++
			file, anchor, _ := strings.Cut(link, "#")
			target := page
			if file != "" {
				target = filepath.Join(filepath.Dir(page), file)
			}
			if !assert.FileExists(t, target, "%s: link %s", name, link) {
				continue
			}
			if anchor != "" && strings.HasSuffix(target, ".md") {
				assert.True(t, doc(target).anchors[anchor], "%s: link %s: no heading #%s in %s", name, link, anchor, file)
			}
		}
	}
	require.NotZero(t, links, "no links found: the parser is broken")
}
