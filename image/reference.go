package image

import (
	"fmt"
	"regexp"
	"strings"
)

// The grammar of the OCI distribution spec for repository names and tags.
var (
	repositoryPattern = regexp.MustCompile(`^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$`)
	tagPattern        = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
)

// ValidateRepository checks a repository name against the distribution spec grammar.
func ValidateRepository(name string) error {
	if !repositoryPattern.MatchString(name) {
		return fmt.Errorf("invalid repository %q: use lowercase letters, digits and separators (. _ __ -) in path components joined by /", name)
	}
	return nil
}

// ValidateTag checks a tag against the distribution spec grammar.
func ValidateTag(tag string) error {
	if !tagPattern.MatchString(tag) {
		return fmt.Errorf("invalid tag %q: use at most 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'", tag)
	}
	return nil
}

// ParseDestination splits "registry/repository[:tag]" into a destination. The first
// path component is the registry host, as in every reference a registry client prints,
// so "localhost:5000/app:v1" is registry localhost:5000, repository app, tag v1.
func ParseDestination(ref string) (Destination, error) {
	host, rest, ok := strings.Cut(ref, "/")
	if !ok || host == "" || rest == "" {
		return Destination{}, fmt.Errorf("invalid destination %q: write registry/repository[:tag], e.g. localhost:5000/app:latest", ref)
	}
	if strings.Contains(rest, "@") {
		return Destination{}, fmt.Errorf("invalid destination %q: a push destination takes a tag, not a digest; the digest comes from the image", ref)
	}
	dest := Destination{Registry: host, Repository: rest}
	if i := strings.LastIndex(rest, ":"); i >= 0 {
		dest.Repository = rest[:i]
		dest.Tags = []string{rest[i+1:]}
	}
	if err := dest.validate(); err != nil {
		return Destination{}, fmt.Errorf("invalid destination %q: %w", ref, err)
	}
	return dest, nil
}
