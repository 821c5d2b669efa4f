// Command goverify is an independent check of an amber ledger export, written against Go's reference
// transparency-log code (golang.org/x/mod/sumdb/note and golang.org/x/mod/sumdb/tlog) and nothing of amber's.
//
//	goverify -key VKEY [-witness-key VKEY ... -min-witnesses N] [-checkpoint FILE|DIR ...] BUNDLE_DIR
//
// It recomputes the RFC 6962/9162 tree from entries.jsonl (each leaf is the exported line without its top-level
// "hash" member: the canonical body amber hashes), checks the hash chain, opens every checkpoint note with the
// log key in force at its size (following ledger.key_rotated entries signed by the previous key), requires the
// log key's name to equal the checkpoint origin, checks each root against the tree and the consistency between
// consecutive checkpoints (tlog.ProveTree / tlog.CheckTree), requires the head to be signed, and counts witness
// cosignatures on the head's checkpoint. It prints one line, "OK ..." (exit 0) or "FAIL <check>: ..." (exit 1);
// usage errors exit 2. What it does not do: read lines that are not in amber's canonical layout (it fails them).
package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

const rotationEvent = "ledger.key_rotated"

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

type failure struct{ check, message string }

func (f failure) Error() string { return f.check + ": " + f.message }

func fail(check, format string, args ...interface{}) error {
	return failure{check, fmt.Sprintf(format, args...)}
}

type schedEntry struct {
	from int64
	key  note.Verifier
	vkey string
}

type checkpoint struct {
	source string
	origin string
	size   int64
	root   tlog.Hash
	msg    []byte
}

func main() {
	var keys, witnessKeys, extra list
	flag.Var(&keys, "key", "trusted log verifier key (repeatable)")
	flag.Var(&witnessKeys, "witness-key", "witness verifier key (repeatable)")
	flag.Var(&extra, "checkpoint", "more checkpoint notes: a note file, JSON lines with a note each, or a directory of *.checkpoint")
	minWitnesses := flag.Int("min-witnesses", 0, "cosignatures by -witness-key the head's checkpoint needs")
	flag.Parse()
	if flag.NArg() != 1 || len(keys) == 0 {
		fmt.Fprintln(os.Stderr, "usage: goverify -key VKEY [-witness-key VKEY -min-witnesses N] [-checkpoint PATH] BUNDLE_DIR")
		os.Exit(2)
	}
	summary, err := verify(flag.Arg(0), keys, witnessKeys, extra, *minWitnesses)
	if err != nil {
		if f, ok := err.(failure); ok {
			fmt.Printf("FAIL %s\n", f.Error())
			os.Exit(1)
		}
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		os.Exit(2)
	}
	fmt.Println("OK " + summary)
}

func verify(dir string, keyTexts, witnessTexts, extra []string, minWitnesses int) (string, error) {
	var manifest struct {
		Origin string `json:"origin"`
	}
	raw, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return "", err
	}
	if err := json.Unmarshal(raw, &manifest); err != nil {
		return "", fmt.Errorf("manifest.json: %v", err)
	}
	var schedule []schedEntry
	for _, text := range keyTexts {
		v, err := note.NewVerifier(text)
		if err != nil {
			return "", fmt.Errorf("-key: %v", err)
		}
		schedule = append(schedule, schedEntry{0, v, text})
	}
	var witnesses []note.Verifier
	for _, text := range witnessTexts {
		v, err := note.NewVerifier(text)
		if err != nil {
			return "", fmt.Errorf("-witness-key: %v", err)
		}
		witnesses = append(witnesses, v)
	}

	// The entries: chain, leaf hashes into tlog's stored hashes, key rotations.
	stored := []tlog.Hash{}
	reader := tlog.HashReaderFunc(func(indexes []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(indexes))
		for i, x := range indexes {
			if x < 0 || x >= int64(len(stored)) {
				return nil, fmt.Errorf("no stored hash %d", x)
			}
			out[i] = stored[x]
		}
		return out, nil
	})
	file, err := os.Open(filepath.Join(dir, "entries.jsonl"))
	if err != nil {
		return "", err
	}
	defer file.Close()
	scanner := bufio.NewScanner(file)
	scanner.Buffer(make([]byte, 1<<20), 64<<20)
	var n int64
	prev := strings.Repeat("0", 64)
	for scanner.Scan() {
		line := scanner.Bytes()
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		n++
		leaf, hash, entry, err := splitLine(line)
		if err != nil {
			return "", fail("format", "entry line %d: %v", n, err)
		}
		if entry.Seq != n {
			return "", fail("sequence", "line %d holds entry %d", n, entry.Seq)
		}
		if entry.Prev != prev {
			return "", fail("link", "entry %d: prev does not match the previous entry's hash", n)
		}
		sum := sha256.Sum256(leaf)
		if hex.EncodeToString(sum[:]) != hash {
			return "", fail("hash", "entry %d: its content does not match its hash", n)
		}
		prev = hash
		hashes, err := tlog.StoredHashes(n-1, leaf, reader)
		if err != nil {
			return "", err
		}
		stored = append(stored, hashes...)
		if entry.Type == rotationEvent {
			schedule, err = rotate(schedule, entry, n)
			if err != nil {
				return "", err
			}
		}
	}
	if err := scanner.Err(); err != nil {
		return "", err
	}

	// The checkpoints: the bundle's and any given.
	notes, err := bundleNotes(filepath.Join(dir, "checkpoints.jsonl"))
	if err != nil {
		return "", err
	}
	for _, path := range extra {
		more, err := notesIn(path)
		if err != nil {
			return "", err
		}
		notes = append(notes, more...)
	}
	known := []note.Verifier{}
	for _, s := range schedule {
		known = append(known, s.key)
	}
	known = append(known, witnesses...)
	verifiers := note.VerifierList(known...)
	var signed []checkpoint
	for _, cp := range notes {
		opened, err := note.Open(cp.msg, verifiers)
		if err != nil {
			return "", fail("signature", "checkpoint %s: %v", cp.source, err)
		}
		if err := parseCheckpoint(&cp, opened.Text); err != nil {
			return "", fail("format", "checkpoint %s: %v", cp.source, err)
		}
		if cp.origin != manifest.Origin {
			return "", fail("origin", "checkpoint %s is for %q, not %q", cp.source, cp.origin, manifest.Origin)
		}
		inForce := keysFor(cp.size, schedule)
		var signer note.Verifier
		for _, sig := range opened.Sigs {
			for _, k := range inForce {
				if k.Name() == sig.Name && k.KeyHash() == sig.Hash {
					signer = k
				}
			}
		}
		if signer == nil {
			return "", fail("signature", "checkpoint %s (size %d) is not signed by the key in force", cp.source, cp.size)
		}
		if signer.Name() != cp.origin {
			return "", fail("key-name", "checkpoint %s is signed by %q, not by a key named after its origin %q", cp.source, signer.Name(), cp.origin)
		}
		if cp.size > n {
			return "", fail("truncation", "checkpoint %s is signed for %d entries but the log has %d", cp.source, cp.size, n)
		}
		root, err := rootAt(cp.size, reader)
		if err != nil {
			return "", err
		}
		if root != cp.root {
			return "", fail("root", "entries 1..%d do not hash to the root signed in checkpoint %s", cp.size, cp.source)
		}
		signed = append(signed, cp)
	}

	// Consistency between consecutive checkpoints, proved from the tree as tlog builds it.
	sort.Slice(signed, func(i, j int) bool { return signed[i].size < signed[j].size })
	for i := 1; i < len(signed); i++ {
		older, newer := signed[i-1], signed[i]
		if older.size == newer.size || older.size == 0 {
			continue
		}
		proof, err := tlog.ProveTree(newer.size, older.size, reader)
		if err != nil {
			return "", err
		}
		if err := tlog.CheckTree(proof, newer.size, newer.root, older.size, older.root); err != nil {
			return "", fail("consistency", "checkpoint %s (size %d) to %s (size %d): %v", older.source, older.size, newer.source, newer.size, err)
		}
	}
	if len(signed) == 0 || signed[len(signed)-1].size != n {
		top := int64(0)
		if len(signed) > 0 {
			top = signed[len(signed)-1].size
		}
		return "", fail("unsigned-tail", "entries %d..%d are not covered by a signed checkpoint", top+1, n)
	}

	// Witness cosignatures on the head's checkpoint, over every copy of it.
	cosigners := map[string]bool{}
	if len(witnesses) > 0 {
		for _, cp := range signed {
			if cp.size != n {
				continue
			}
			opened, err := note.Open(cp.msg, note.VerifierList(witnesses...))
			if err != nil {
				if _, ok := err.(*note.UnverifiedNoteError); ok {
					continue
				}
				return "", fail("witness", "checkpoint %s: %v", cp.source, err)
			}
			for _, sig := range opened.Sigs {
				cosigners[fmt.Sprintf("%s+%08x", sig.Name, sig.Hash)] = true
			}
		}
	}
	if len(cosigners) < minWitnesses {
		return "", fail("witness", "the head's checkpoint (size %d) carries %d cosignatures, %d required", n, len(cosigners), minWitnesses)
	}
	head, _ := rootAt(n, reader)
	return fmt.Sprintf("%d entries, %d checkpoints, root %s, %d witness cosignatures", n, len(signed), hex.EncodeToString(head[:]), len(cosigners)), nil
}

type entryFields struct {
	Seq     int64           `json:"seq"`
	Prev    string          `json:"prev"`
	Type    string          `json:"type"`
	Payload json.RawMessage `json:"payload"`
}

// splitLine returns the leaf data (the line without its top-level "hash" member), the stored hash and the
// fields the checks need. amber exports canonical JSON with sorted keys: the top-level "hash" comes right
// after "at" and before "payload", and no key before it holds an object with a "hash" key.
func splitLine(line []byte) ([]byte, string, entryFields, error) {
	var fields entryFields
	var all map[string]json.RawMessage
	if err := json.Unmarshal(line, &all); err != nil {
		return nil, "", fields, err
	}
	if err := json.Unmarshal(line, &fields); err != nil {
		return nil, "", fields, err
	}
	var hash string
	if err := json.Unmarshal(all["hash"], &hash); err != nil || len(hash) != 64 {
		return nil, "", fields, fmt.Errorf("no 64-hex hash")
	}
	member := []byte(`,"hash":"` + hash + `"`)
	at := bytes.Index(line, member)
	if at < 0 {
		return nil, "", fields, fmt.Errorf("not amber's canonical layout")
	}
	leaf := append(append([]byte{}, line[:at]...), line[at+len(member):]...)
	return leaf, hash, fields, nil
}

// rotate follows a ledger.key_rotated entry: the old key (in force) signed the hand-over to the new key.
func rotate(schedule []schedEntry, entry entryFields, seq int64) ([]schedEntry, error) {
	var payload struct {
		Origin    string `json:"origin"`
		OldKey    string `json:"old_key"`
		NewKey    string `json:"new_key"`
		Signature string `json:"signature"`
	}
	if err := json.Unmarshal(entry.Payload, &payload); err != nil {
		return nil, fail("key-rotation", "entry %d: malformed key rotation", seq)
	}
	current := keysFor(1<<62, schedule)
	var old note.Verifier
	for i, k := range current {
		if schedule[len(schedule)-len(current)+i].vkey == payload.OldKey {
			old = k
		}
	}
	newKey, err := note.NewVerifier(payload.NewKey)
	if old == nil || err != nil {
		return nil, fail("key-rotation", "entry %d: the rotation is not signed by the key in force", seq)
	}
	// The statement amber's old key signs: canonical JSON (sorted keys, no spaces, UTF-8).
	statement := fmt.Sprintf(`{"new":%s,"old":%s,"origin":%s,"statement":"amber ledger key rotation"}`,
		quote(payload.NewKey), quote(payload.OldKey), quote(payload.Origin))
	signature, err := base64.StdEncoding.DecodeString(payload.Signature)
	if err != nil || !old.Verify([]byte(statement), signature) {
		return nil, fail("key-rotation", "entry %d: the rotation is not signed by the key in force", seq)
	}
	return append(schedule, schedEntry{seq, newKey, payload.NewKey}), nil
}

func quote(s string) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	return strings.TrimSuffix(buf.String(), "\n")
}

func keysFor(size int64, schedule []schedEntry) []note.Verifier {
	start := int64(-1)
	for _, s := range schedule {
		if s.from <= size && s.from > start {
			start = s.from
		}
	}
	var out []note.Verifier
	for _, s := range schedule {
		if s.from == start {
			out = append(out, s.key)
		}
	}
	return out
}

func rootAt(size int64, reader tlog.HashReader) (tlog.Hash, error) {
	if size == 0 {
		return tlog.Hash(sha256.Sum256(nil)), nil // RFC 9162's empty tree (tlog says all zeros)
	}
	return tlog.TreeHash(size, reader)
}

func parseCheckpoint(cp *checkpoint, text string) error {
	lines := strings.SplitN(text, "\n", 4)
	if len(lines) < 4 {
		return fmt.Errorf("a checkpoint has an origin, a size and a root")
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 || (len(lines[1]) > 1 && lines[1][0] == '0') {
		return fmt.Errorf("bad tree size %q", lines[1])
	}
	root, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(root) != tlog.HashSize {
		return fmt.Errorf("bad root hash")
	}
	cp.origin, cp.size = lines[0], size
	copy(cp.root[:], root)
	return nil
}

func bundleNotes(path string) ([]checkpoint, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []checkpoint
	for i, line := range strings.Split(string(data), "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var item struct {
			ID   json.Number `json:"id"`
			Note string      `json:"note"`
		}
		if err := json.Unmarshal([]byte(line), &item); err != nil {
			return nil, fmt.Errorf("%s line %d: %v", path, i+1, err)
		}
		out = append(out, checkpoint{source: "#" + item.ID.String() + " (bundle)", msg: []byte(item.Note)})
	}
	return out, nil
}

func notesIn(path string) ([]checkpoint, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if info.IsDir() {
		files, _ := filepath.Glob(filepath.Join(path, "*.checkpoint"))
		sort.Strings(files)
		if len(files) == 0 {
			return nil, fmt.Errorf("%s holds no *.checkpoint files", path)
		}
		var out []checkpoint
		for _, f := range files {
			more, err := notesIn(f)
			if err != nil {
				return nil, err
			}
			out = append(out, more...)
		}
		return out, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(strings.TrimLeft(string(data), " \t\r\n"), "{") {
		return []checkpoint{{source: path, msg: data}}, nil
	}
	var out []checkpoint
	for i, line := range strings.Split(string(data), "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var item struct {
			Note string `json:"note"`
		}
		if err := json.Unmarshal([]byte(line), &item); err != nil {
			return nil, fmt.Errorf("%s line %d: %v", path, i+1, err)
		}
		out = append(out, checkpoint{source: fmt.Sprintf("%s:%d", path, i+1), msg: []byte(item.Note)})
	}
	return out, nil
}
