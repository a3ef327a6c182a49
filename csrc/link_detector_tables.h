// Per-token tables of the link detector (included by link_detector.cpp only): what each token's
// bytes are, whether the state machine must read them one by one, and how a token that cannot open
// anything changes the stream's flags.
#pragma once
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace craft {
namespace link_detector {

namespace py = pybind11;
using i64 = int64_t;

enum Kind : uint8_t { EMPTY = 0, PLAIN = 1, SPECIAL = 2 };

// Flags of a stream between bytes: an escaping backslash, "!", "the line holds only whitespace after
// a newline" (blank-line detection), and in bits 3-5 how many spaces the line started with
// (kNoLineStart once it holds anything else: fences may be indented by at most 3).
constexpr uint8_t ESC = 1, BANG = 2, NL = 4;
constexpr int kLsShift = 3;
constexpr uint8_t kNoLineStart = 4;
inline uint8_t line_start(uint8_t f) { return f >> kLsShift; }

inline bool is_special(unsigned char c) {
    switch (c) {
        case '[': case ']': case '(': case ')': case '!': case '\\': case '\n': case '<': case '>': case '`': case '~':
            return true;
        default:
            return false;
    }
}

inline bool is_punct(unsigned char c) {  // ASCII punctuation: what a backslash escapes
    return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126);
}

// The flags after text byte b (not an escaped one): the twin's _line_flags, ESC untouched.
inline uint8_t line_flags(uint8_t f, unsigned char b) {
    bool nl = f & NL;
    int ls = line_start(f);
    if (b == '\n') {
        nl = true;
        ls = 0;
    } else if (b == ' ') {
        ls = std::min(ls + 1, int{kNoLineStart});
    } else if (b == '\t' || b == '\r') {
        ls = kNoLineStart;
    } else {
        nl = false;
        ls = kNoLineStart;
    }
    return static_cast<uint8_t>((f & ESC) | (b == '!' ? BANG : 0) | (nl ? NL : 0) | ls << kLsShift);
}

// How a token read as text with no opener changes the flags, for one value of ESC before it:
// bits 0-2 set, bits 3-5 keep (ESC, BANG, NL); bit 6 keep the line-start count; bits 7-9 add to it.
struct FlagStep {
    uint16_t e;
    uint8_t apply(uint8_t f) const {
        const uint8_t low = static_cast<uint8_t>((f & (e >> 3) & 7) | (e & 7));
        const int ls = ((e >> 6) & 1 ? line_start(f) : 0) + ((e >> 7) & 7);
        return static_cast<uint8_t>(low | std::min(ls, int{kNoLineStart}) << kLsShift);
    }
    bool constant() const { return ((e >> 3) & 7) == 0 && ((e >> 6) & 1) == 0; }
};

// Simulates the twin's _text over a token's bytes with no opener, keeping track of which flags
// still depend on the flags before the token.
inline FlagStep flag_step(const char* p, i64 n, bool esc_in) {
    if (n == 0) return FlagStep{static_cast<uint16_t>(7 << 3 | 1 << 6)};  // no bytes: every flag kept
    bool esc = esc_in, bang = false, nl_keep = true, nl = false, ls_keep = true;
    int ls_add = 0;
    auto non_blank = [&] { nl_keep = false, nl = false, ls_keep = false, ls_add = kNoLineStart; };
    for (i64 i = 0; i < n; ++i) {
        const unsigned char c = static_cast<unsigned char>(p[i]);
        if (esc && is_punct(c)) {
            esc = bang = false;
            non_blank();
            continue;
        }
        esc = c == '\\';
        bang = c == '!';
        if (c == '\n') {
            nl_keep = false, nl = true, ls_keep = false, ls_add = 0;
        } else if (c == ' ') {
            ls_add = std::min(ls_add + 1, int{kNoLineStart});
        } else if (c == '\t' || c == '\r') {
            ls_keep = false, ls_add = kNoLineStart;
        } else {
            non_blank();
        }
    }
    const int set = (esc ? ESC : 0) | (bang ? BANG : 0) | (nl ? NL : 0);
    const int keep = nl_keep ? NL : 0;
    return FlagStep{static_cast<uint16_t>(set | keep << 3 | (ls_keep ? 1 : 0) << 6 | ls_add << 7)};
}

// How a token read inside a code span changes the flags (the twin's _code_text over its bytes,
// which never sets ESC): for tokens without a backtick or a newline, the only bytes a span's
// content waits for. Same encoding as flag_step.
inline FlagStep code_step(const char* p, i64 n) {
    if (n == 0) return FlagStep{static_cast<uint16_t>(7 << 3 | 1 << 6)};
    bool bang = false, nl_keep = true, ls_keep = true;
    int ls_add = 0;
    for (i64 i = 0; i < n; ++i) {
        const unsigned char c = static_cast<unsigned char>(p[i]);
        bang = c == '!';
        if (c == ' ') {
            ls_add = std::min(ls_add + 1, int{kNoLineStart});
        } else if (c == '\t' || c == '\r') {
            ls_keep = false, ls_add = kNoLineStart;
        } else {
            nl_keep = false, ls_keep = false, ls_add = kNoLineStart;
        }
    }
    const int keep = ESC | (nl_keep ? NL : 0);
    return FlagStep{static_cast<uint16_t>((bang ? BANG : 0) | keep << 3 | (ls_keep ? 1 : 0) << 6 | ls_add << 7)};
}

struct TokenInfo {  // where a token's bytes are and what they hold: one 8-byte load per token
    uint32_t off;       // into TokenTables::bytes
    uint32_t len_kind;  // len << 2 | kind
    i64 len() const { return len_kind >> 2; }
    uint8_t kind() const { return len_kind & 3; }
};

struct TokenTables {
    std::string bytes;  // every token's bytes, concatenated
    std::vector<TokenInfo> info;
    std::vector<FlagStep> idle;   // idle[2 * t + esc_before]
    std::vector<uint64_t> opens;     // bit t: token t may leave the idle state ('[', or '`' / '~' with code)
    std::vector<uint64_t> newlines;  // bit t: token t holds a newline (all a fenced line's content waits for)
    std::vector<uint64_t> code_stops;  // bit t: token t holds a backtick or a newline (what a code span waits for)
    std::vector<FlagStep> code;        // code[t]: the flags after token t inside a code span (code_step)

    bool may_open(i64 t) const { return (opens[static_cast<size_t>(t) >> 6] >> (t & 63)) & 1; }
    bool has_newline(i64 t) const { return (newlines[static_cast<size_t>(t) >> 6] >> (t & 63)) & 1; }
    bool stops_code(i64 t) const { return (code_stops[static_cast<size_t>(t) >> 6] >> (t & 63)) & 1; }
    const FlagStep& step(i64 t, uint8_t flags) const { return idle[2 * static_cast<size_t>(t) + (flags & ESC)]; }
    void prefetch_record(i64 t) const {
        __builtin_prefetch(&info[static_cast<size_t>(t)]);
        __builtin_prefetch(&idle[2 * static_cast<size_t>(t)]);
    }

    // The flags after ids[0, n), none of which may open, from `flags` before them. Only the tokens
    // after the last one whose step ignores the flags before it (most tokens) are replayed.
    uint8_t flags_after(const i64* ids, i64 n, uint8_t flags) const {
        i64 k = n;
        while (k > 0 && !resets(ids[k - 1])) --k;
        uint8_t f = k > 0 ? step(ids[k - 1], 0).apply(0) : flags;
        for (; k < n; ++k) f = step(ids[k], f).apply(f);
        return f;
    }

    TokenTables(const std::vector<py::bytes>& tb, bool skip_code) {
        if (tb.size() >= (size_t{1} << 31)) throw py::value_error("token_bytes: at most 2**31 - 1 tokens");
        info.reserve(tb.size());
        idle.reserve(2 * tb.size());
        opens.assign((tb.size() + 63) / 64, 0);
        newlines.assign((tb.size() + 63) / 64, 0);
        code_stops.assign((tb.size() + 63) / 64, 0);
        code.reserve(tb.size());
        for (const auto& b : tb) {
            char* p = nullptr;
            py::ssize_t n = 0;
            PYBIND11_BYTES_AS_STRING_AND_SIZE(b.ptr(), &p, &n);
            if (bytes.size() + static_cast<size_t>(n) > UINT32_MAX / 4)
                throw py::value_error("token_bytes: more than 1 GiB of token bytes");
            uint8_t k = n == 0 ? EMPTY : PLAIN;
            bool opener = false, newline = false, tick = false;
            for (py::ssize_t i = 0; i < n; ++i) {
                const char c = p[i];
                newline = newline || c == '\n';
                tick = tick || c == '`';
                if (is_special(static_cast<unsigned char>(c))) k = SPECIAL;
                if (c == '[' || (skip_code && (c == '`' || c == '~'))) opener = true;
            }
            idle.push_back(flag_step(p, n, false));
            idle.push_back(flag_step(p, n, true));
            if (opener) opens[info.size() >> 6] |= uint64_t{1} << (info.size() & 63);
            if (newline) newlines[info.size() >> 6] |= uint64_t{1} << (info.size() & 63);
            if (newline || tick) code_stops[info.size() >> 6] |= uint64_t{1} << (info.size() & 63);
            code.push_back(code_step(p, n));
            info.push_back({static_cast<uint32_t>(bytes.size()), static_cast<uint32_t>(n) << 2 | k});
            bytes.append(p, static_cast<size_t>(n));
        }
    }
    i64 vocab() const { return static_cast<i64>(info.size()); }

   private:
    bool resets(i64 t) const {  // the flags after t do not depend on the flags before it
        const FlagStep a = step(t, 0), b = step(t, ESC);
        return a.e == b.e && a.constant();
    }
};

}  // namespace link_detector
}  // namespace craft
