// Path safety for received entries.
//
// A wire path is relative, '/'-separated and already normalized: no leading '/', no
// empty, "." or ".." components, no NUL, each name at most max_name_bytes and the whole
// at most max_path_bytes. Anything else is refused, never "repaired", so two different
// wire paths can never name the same file. Within those rules a name is any bytes, as on
// Linux: UTF-8 or not, a backslash or a ':' included (docs/decisions.md, "File names are bytes").
#pragma once

#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace ferry {

// Returns {} if `path` is a safe wire path, protocol_errc::bad_path otherwise.
std::error_code check_wire_path(std::string_view path);

// Length (1-4) of the well-formed UTF-8 sequence starting at s[i], or 0 if there is none
// there (a stray continuation byte, an overlong form, a surrogate, beyond U+10FFFF, cut).
std::size_t utf8_sequence_length(std::string_view s, std::size_t i);

// `text` a peer sent (a path, an error message) made safe to put in one log line: control
// characters (C0, DEL, C1), the Unicode line separators and bidirectional controls, and
// bytes that are not UTF-8 become \xNN escapes and a backslash becomes \\, so that the
// text can neither end the line nor drive a terminal, and reads as it was sent.
std::string printable(std::string_view text);

// True for names ferry reserves for its partial files and their resume records
// (".NAME.ferry-part", ".ferry-HASH.part", ".NAME.ferry-resume", ".ferry-HASH.resume", and
// a record being replaced, with "~" after it): a receiver refuses them in an offer, a
// sender skips them, and a receiver's sweep removes old ones. (A user's file of such a
// name was once sent, then deleted by the receiver as its own record: 2026-12-04.)
bool is_partial_file_name(std::string_view name);

// Splits a checked wire path into its components.
std::vector<std::string_view> split_wire_path(std::string_view path);

// The parent of a wire path ("" for a top-level entry).
std::string_view wire_parent(std::string_view path);
// The last component of a wire path (split_wire_path's last, without the array).
std::string_view wire_name(std::string_view path);

// The order a sender offers entries in (docs/decisions.md, "A bounded index"): name by
// name, each compared as bytes, so a folder comes right before what it holds ("a",
// "a/b", "a.txt"). Strictly less. As strings compared byte by byte, with '/' below
// every other byte.
bool wire_path_less(std::string_view a, std::string_view b);
// Whether `inner` lies in the folder `outer` (at any depth; not `outer` itself).
bool wire_path_within(std::string_view inner, std::string_view outer);

}  // namespace ferry
