// One token stream's link-detection state machine (included by link_detector.cpp only): the C++
// twin of LinkDetectorReference in craft_kernels/native/link_detector.py, rule for rule (the rules
// are in that module's docstring). Completed links go to a LinkArena.
#pragma once
#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "link_detector_tables.h"

namespace craft {
namespace link_detector {

struct Limits {
    i64 max_text, max_target, max_openers, max_depth, max_span;
    bool skip_code;
};

// max_text + max_target + 8 without overflowing (any int64 limits are accepted).
inline i64 span_bound(i64 max_text, i64 max_target) {
    constexpr i64 kMax = std::numeric_limits<i64>::max();
    return max_text > kMax - 8 - max_target ? kMax : max_text + max_target + 8;
}

// One completed link; its text, target and token ids live in the arena it was written to.
struct LinkRec {
    i64 pos[8];  // [ ] ( ) token positions, then their byte offsets
    bool image;
    size_t text_off, text_len, target_off, target_len, ids_off, n_text_ids, n_target_ids;
};

struct LinkArena {
    std::vector<LinkRec> recs;
    std::string bytes;
    std::vector<int32_t> ids;
    void clear() {
        recs.clear();
        bytes.clear();
        ids.clear();
    }
};

enum State : uint8_t { TEXT, AFTER_CLOSE, TARGET, TICKS, TILDES, CODE, FENCE_INFO, FENCE };
enum Form : uint8_t { BARE, ANGLE, ANGLE_DONE };  // a target as written: plain, inside <...>, after ">"
enum FenceLine : uint8_t { LINE, RUN, TAIL, BODY };  // inside a fence: indent, fence run, after it, content

struct Opener {
    i64 tok, off, buf;
    bool image, active;
};

class Stream {
   public:
    Stream() { reset(); }

    void reset() {
        pos_ = 0;
        state_ = TEXT;
        openers_.clear();
        buf_.clear();
        target_.clear();
        cand_text_.clear();
        hist_first_ = hist_n_ = 0;
        flags_ = 0;
        depth_ = 0;
        form_ = BARE;
        lead_.clear();
        run_ = fence_len_ = 0;
        at_line_start_ = false;
        fence_char_ = 0;
        fline_ = LINE;
    }

    bool inside_target() const { return state_ == TARGET; }
    const std::string& target() const { return target_; }

    void push_run(const TokenTables& tt, const Limits& lim, const i64* ids, i64 n, LinkArena& out) {
        i64 i = 0;
        while (i < n) {
            if (state_ == TEXT && openers_.empty()) {  // nothing open: the common case
                const i64 start = i;
                while (i < n && !tt.may_open(ids[i])) ++i;  // independent lookups, no dependency chain
                // the tokens of the run that hold special bytes change nothing but the flags
                flags_ = tt.flags_after(ids + start, i - start, flags_);
                pos_ += i - start;
                if (i == n) return;
            } else if (state_ == CODE && run_ == 0 && openers_.empty()) {  // inside a code span, no link open:
                // only a backtick or a newline can change more than the line flags (hist_n_ is 0 here)
                const i64 start = i;
                uint8_t f = flags_;
                for (; i < n && !tt.stops_code(ids[i]); ++i) f = tt.code[static_cast<size_t>(ids[i])].apply(f);
                flags_ = f;
                pos_ += i - start;
                if (i == n) return;
            } else if (state_ == FENCE && fline_ == BODY) {  // inside a fenced line: only its newline matters
                // (nothing is open in a fence, and the newline sets every flag the fence reads)
                const i64 start = i;
                while (i < n && !tt.has_newline(ids[i])) ++i;
                pos_ += i - start;
                if (i == n) return;
            }
            // Token by token from here (inside a link or code): each token's info record and flag
            // step are loads from tables of the whole vocabulary (600 KB), often cache misses, and
            // the state machine's branches keep the CPU from running ahead to issue them: prefetch
            // them kAhead tokens ahead (prefetching the bytes too, through the record, did not help).
            if (i + kAhead < n) tt.prefetch_record(ids[i + kAhead]);
            push_one(tt, lim, ids[i++], out);
        }
    }

   private:
    static constexpr i64 kAhead = 16;

    void push_one(const TokenTables& tt, const Limits& lim, i64 t, LinkArena& out) {
        const TokenInfo ti = tt.info[static_cast<size_t>(t)];
        if (state_ == TEXT && openers_.empty() && ti.kind() != SPECIAL) {  // (tokens reached one at a time)
            flags_ = tt.step(t, flags_).apply(flags_);
            ++pos_;
            return;
        }
        if (hist_n_ == 0) hist_first_ = pos_;
        hist_put(t);
        const char* s = tt.bytes.data() + ti.off;
        const i64 n = ti.len();
        if (ti.kind() == PLAIN && plain(tt, lim, t, s, n)) {
        } else {
            for (i64 k = 0; k < n; ++k) byte(lim, static_cast<unsigned char>(s[k]), k, out);
        }
        trim(lim);
        ++pos_;
    }

    bool escaped() const { return flags_ & ESC; }
    void set_escaped(bool e) { flags_ = static_cast<uint8_t>((flags_ & ~ESC) | (e ? ESC : 0)); }
    bool blank_line_ahead() const { return flags_ & NL; }

    // A token's bytes onto a link's text or target: short tokens (most) byte by byte, inline, as a
    // call to append (and its memcpy) cost more than the few bytes.
    static void append_token(std::string& d, const char* s, i64 n) {
        if (n <= 8) {
            for (i64 k = 0; k < n; ++k) d.push_back(s[k]);
        } else {
            d.append(s, static_cast<size_t>(n));
        }
    }

    // A token without special bytes, in one step where the state allows; false: read it byte by byte.
    bool plain(const TokenTables& tt, const Limits& lim, i64 t, const char* s, i64 n) {
        switch (state_) {
            case TARGET:
                if (form_ == ANGLE_DONE || (form_ == BARE && target_.empty())) return false;
                flags_ &= static_cast<uint8_t>(~(NL | ESC));
                append_token(target_, s, n);
                if (static_cast<i64>(target_.size()) > lim.max_target) abort_target(lim);
                return true;
            case TEXT:
            case FENCE_INFO:
                break;
            case CODE:
                if (run_ != 0) return false;
                break;
            case FENCE:
                if (fline_ == RUN || fline_ == TAIL) return false;
                break;
            default:
                return false;
        }
        flags_ = tt.step(t, flags_).apply(flags_);
        if (state_ == FENCE && fline_ == LINE && line_start(flags_) >= kNoLineStart) fline_ = BODY;
        if (!openers_.empty()) {
            append_token(buf_, s, n);
            bound_text(lim);
        }
        return true;
    }

    void byte(const Limits& lim, unsigned char b, i64 off, LinkArena& out) {
        if (state_ == TARGET) return target_byte(lim, b, off, out);
        if (state_ == AFTER_CLOSE) {
            if (b == '(') {
                state_ = TARGET;
                paren_tok_ = pos_;
                paren_off_ = off;
                target_.clear();
                depth_ = 0;
                form_ = BARE;
                lead_.clear();
                set_escaped(false);
                return;
            }
            drop_candidate();
        } else if (state_ != TEXT) {
            return code_byte(lim, b, off);
        }
        text(lim, b, off);
    }

    void target_byte(const Limits& lim, unsigned char b, i64 off, LinkArena& out) {
        if (form_ == ANGLE_DONE) {
            if (b == ')') return complete(lim, off, out);
            abort_target(lim);
            return text(lim, b, off);
        }
        if (escaped() && is_punct(b)) {
            set_escaped(false);
            return target_append(lim, b);
        }
        set_escaped(false);  // a backslash before anything else is just a backslash
        if ((b == ' ' || b == '\t' || b == '\r' || (b == '\n' && lead_.find('\n') == std::string::npos)) &&
            target_.empty() && form_ == BARE) {
            lead_.push_back(static_cast<char>(b));  // whitespace before the target
            if (b == '\n') flags_ |= NL;            // (a blank line if the target is abandoned)
            if (static_cast<i64>(lead_.size()) > lim.max_target) abort_target(lim);
            return;
        }
        if (b == '\\') {
            set_escaped(true);
        } else if (b == '\n' || (b == '<' && form_ == ANGLE)) {
            abort_target(lim);
            return text(lim, b, off);
        } else if (form_ == ANGLE) {
            if (b == '>') {
                form_ = ANGLE_DONE;
                return;
            }
        } else if (b == '<' && target_.empty()) {
            form_ = ANGLE;
            return;
        } else if (b == '(') {
            if (++depth_ > lim.max_depth) {
                abort_target(lim);
                return text(lim, b, off);
            }
        } else if (b == ')') {
            if (depth_ == 0) return complete(lim, off, out);
            --depth_;
        }
        target_append(lim, b);
    }

    void target_append(const Limits& lim, unsigned char b) {
        flags_ &= static_cast<uint8_t>(~NL);
        target_.push_back(static_cast<char>(b));
        if (static_cast<i64>(target_.size()) > lim.max_target) abort_target(lim);
    }

    void text(const Limits& lim, unsigned char b, i64 off) {
        if (escaped()) {
            set_escaped(false);
            if (is_punct(b)) {  // an escaped character is plain text
                if (!openers_.empty()) buf_.push_back(static_cast<char>(b));
                flags_ = static_cast<uint8_t>(kNoLineStart << kLsShift);
                bound_text(lim);
                return;
            }
        }
        if (b == '\\') {
            set_escaped(true);
            if (!openers_.empty()) buf_.push_back('\\');
        } else if (b == '[') {
            if (openers_.empty())
                buf_.clear();
            else
                buf_.push_back('[');
            openers_.push_back({pos_, off, static_cast<i64>(buf_.size()), (flags_ & BANG) != 0, true});
            if (static_cast<i64>(openers_.size()) > lim.max_openers) openers_.erase(openers_.begin());
        } else if (b == ']') {
            if (!openers_.empty()) {
                const Opener op = openers_.back();
                openers_.pop_back();
                if (op.active) {  // an inactive opener (before a link) makes "]" plain text
                    cand_ = op;
                    cand_text_.assign(buf_, static_cast<size_t>(op.buf), std::string::npos);
                    close_tok_ = pos_;
                    close_off_ = off;
                    state_ = AFTER_CLOSE;
                }
                if (!openers_.empty()) buf_.push_back(']');
            }
        } else if (b == '\n' && blank_line_ahead()) {
            openers_.clear();  // blank line: the paragraph ends
        } else {
            if (!openers_.empty()) buf_.push_back(static_cast<char>(b));
            if (lim.skip_code && b == '`') {
                state_ = TICKS;
                run_ = 1;
                at_line_start_ = line_start(flags_) < kNoLineStart;
            } else if (lim.skip_code && b == '~' && line_start(flags_) < kNoLineStart) {
                state_ = TILDES;
                run_ = 1;
            }
        }
        flags_ = line_flags(flags_, b);
        bound_text(lim);
    }

    // A byte of code (or of a run that may open code): text of the enclosing link, if any.
    void code_text(const Limits& lim, unsigned char b) {
        if (!openers_.empty()) buf_.push_back(static_cast<char>(b));
        flags_ = line_flags(flags_, b);
        bound_text(lim);
    }

    void code_byte(const Limits& lim, unsigned char b, i64 off) {
        switch (state_) {
            case TICKS:
            case TILDES: {
                const unsigned char c = state_ == TICKS ? '`' : '~';
                if (b == c) {
                    ++run_;
                    return code_text(lim, b);
                }
                if (run_ >= 3 && (state_ == TILDES || at_line_start_)) {
                    state_ = FENCE_INFO;
                    fence_char_ = c;
                    fence_len_ = run_;
                } else if (state_ == TICKS) {
                    state_ = CODE;
                    fence_len_ = run_;
                    run_ = 0;
                } else {  // fewer than 3 tildes: plain text
                    state_ = TEXT;
                    return text(lim, b, off);
                }
                return code_byte(lim, b, off);
            }
            case CODE:
                if (b == '`') {
                    ++run_;
                    return code_text(lim, b);
                }
                if (run_ == fence_len_) {  // the closing run
                    state_ = TEXT;
                    return text(lim, b, off);
                }
                run_ = 0;
                if (b == '\n' && blank_line_ahead()) {  // a blank line ends the paragraph and the span
                    state_ = TEXT;
                    return text(lim, b, off);
                }
                return code_text(lim, b);
            case FENCE_INFO:
                if (b == '\n') {  // the fence opens: the paragraph before it ends
                    state_ = FENCE;
                    fline_ = LINE;
                    run_ = 0;
                    openers_.clear();
                } else if (b == '`' && fence_char_ == '`') {  // a backtick after ```: a code span, not a fence
                    state_ = CODE;
                    run_ = 1;
                }
                return code_text(lim, b);
            default:  // FENCE: a line of >= fence_len_ fence characters (indent <= 3, then whitespace) closes it
                if (b == '\n') {
                    if ((fline_ == RUN || fline_ == TAIL) && run_ >= fence_len_) state_ = TEXT;
                    fline_ = LINE;
                    run_ = 0;
                } else if (fline_ == LINE) {
                    if (b == fence_char_ && line_start(flags_) < kNoLineStart) {
                        fline_ = RUN;
                        run_ = 1;
                    } else if (!(b == ' ' && line_start(flags_) < 3)) {
                        fline_ = BODY;
                    }
                } else if (fline_ == RUN) {
                    if (b == fence_char_)
                        ++run_;
                    else
                        fline_ = (b == ' ' || b == '\t' || b == '\r') ? TAIL : BODY;
                } else if (fline_ == TAIL && !(b == ' ' || b == '\t' || b == '\r')) {
                    fline_ = BODY;
                }
                return code_text(lim, b);
        }
    }

    void drop_candidate() {
        state_ = TEXT;
        cand_text_.clear();
    }

    // The target as written, for the text of an enclosing link.
    void append_raw_target(std::string& s) const {
        s.push_back('(');
        s += lead_;
        if (form_ != BARE) s.push_back('<');
        s += target_;
        if (form_ == ANGLE_DONE) s.push_back('>');
    }

    // The target cannot complete: its bytes go back to the enclosing link text (if any).
    void abort_target(const Limits& lim) {
        state_ = TEXT;
        set_escaped(false);
        if (!openers_.empty()) append_raw_target(buf_);
        target_.clear();
        lead_.clear();
        cand_text_.clear();
        form_ = BARE;
        bound_text(lim);
    }

    void bound_text(const Limits& lim) {
        while (!openers_.empty() && static_cast<i64>(buf_.size()) - openers_.front().buf > lim.max_text)
            openers_.erase(openers_.begin());
        if (openers_.empty()) {
            buf_.clear();
        } else if (openers_.front().buf > lim.max_text) {  // rebase: the bytes before the oldest opener go
            const i64 cut = openers_.front().buf;
            buf_.erase(0, static_cast<size_t>(cut));
            for (auto& o : openers_) o.buf -= cut;
        }
    }

    i64 oldest_needed() const {  // -1: nothing open
        if (!openers_.empty()) return openers_.front().tok;
        return (state_ == AFTER_CLOSE || state_ == TARGET) ? cand_.tok : -1;
    }

    // The ids of positions [hist_first_, hist_first_ + hist_n_) sit at ring_[pos & mask].
    void hist_put(i64 t) {
        if (hist_n_ == static_cast<i64>(ring_.size())) {
            std::vector<int32_t> bigger(std::max<size_t>(64, 2 * ring_.size()));
            const i64 mask = static_cast<i64>(bigger.size()) - 1;
            for (i64 p = hist_first_; p < hist_first_ + hist_n_; ++p) bigger[p & mask] = hist(p);
            ring_.swap(bigger);
        }
        ring_[pos_ & (static_cast<i64>(ring_.size()) - 1)] = static_cast<int32_t>(t);
        ++hist_n_;
    }
    int32_t hist(i64 p) const { return ring_[p & (static_cast<i64>(ring_.size()) - 1)]; }

    // History holds the ids from the oldest open bracket on; spans over max_span tokens are abandoned.
    void trim(const Limits& lim) {
        i64 keep = oldest_needed();
        while (keep >= 0 && pos_ - keep + 1 > lim.max_span) {
            if (!openers_.empty()) {
                openers_.erase(openers_.begin());
                bound_text(lim);
            } else {
                if (state_ == TARGET) abort_target(lim);
                drop_candidate();
            }
            keep = oldest_needed();
        }
        if (keep < 0) {
            hist_n_ = 0;
            return;
        }
        hist_n_ -= keep - hist_first_;
        hist_first_ = keep;
    }

    void complete(const Limits& lim, i64 off, LinkArena& out) {
        LinkRec r{{cand_.tok, close_tok_, paren_tok_, pos_, cand_.off, close_off_, paren_off_, off},
                  cand_.image, out.bytes.size(), cand_text_.size(), out.bytes.size() + cand_text_.size(),
                  target_.size(), out.ids.size(), static_cast<size_t>(close_tok_ - cand_.tok + 1),
                  static_cast<size_t>(pos_ - paren_tok_ + 1)};
        out.bytes += cand_text_;
        out.bytes += target_;
        for (i64 p = cand_.tok; p <= close_tok_; ++p) out.ids.push_back(hist(p));
        for (i64 p = paren_tok_; p <= pos_; ++p) out.ids.push_back(hist(p));
        out.recs.push_back(r);
        if (!openers_.empty()) {  // an image in a link's text (a badge), or a link in an image's text
            append_raw_target(buf_);
            buf_.push_back(')');
            if (!cand_.image)  // links do not contain links: the "[" openers before it stop
                for (auto& o : openers_) o.active = o.active && o.image;
        }
        state_ = TEXT;
        flags_ = static_cast<uint8_t>(kNoLineStart << kLsShift);
        target_.clear();
        lead_.clear();
        cand_text_.clear();
        form_ = BARE;
        bound_text(lim);
    }

    i64 pos_ = 0;
    State state_ = TEXT;
    std::vector<Opener> openers_;
    std::string buf_, target_, cand_text_, lead_;  // lead_: whitespace skipped before the target
    std::vector<int32_t> ring_;
    i64 hist_first_ = 0, hist_n_ = 0;
    uint8_t flags_ = 0;
    Opener cand_{0, 0, 0, false, true};
    i64 close_tok_ = 0, close_off_ = 0, paren_tok_ = 0, paren_off_ = 0, depth_ = 0;
    Form form_ = BARE;
    i64 run_ = 0, fence_len_ = 0;  // a code span's opening length is in fence_len_ too
    bool at_line_start_ = false;
    unsigned char fence_char_ = 0;
    FenceLine fline_ = LINE;
};

}  // namespace link_detector
}  // namespace craft
