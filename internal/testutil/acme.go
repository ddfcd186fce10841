package testutil

import "strings"

// ChallengeValue returns the i-th of a series of distinct ACME DNS-01
// challenge values: 43 characters of the base64url alphabet, like the
// digests ACME clients compute. i is 0 to 61.
func ChallengeValue(i int) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	return strings.Repeat(alphabet[i:i+1], 41) + "-_"
}
