package broker

// MaxTopicNameLen is the longest topic name accepted.
const MaxTopicNameLen = 128

// ValidTopicName reports whether name is 1-128 characters of letters, digits,
// '.', '_' and '-'. The restricted alphabet also means a name never needs
// escaping in JSON or URLs.
func ValidTopicName(name string) bool {
	if len(name) == 0 || len(name) > MaxTopicNameLen {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}
