// Incremental markdown link detection over token bytes: the C++ twin of
// craft_kernels/native/link_detector.py (LinkDetectorReference), rule for rule.
//
// What makes it fast:
// - A run of tokens read while nothing is open costs one bit test per token (TokenTables::opens: may
//   it open a link?); the escape / "!" / newline flags after the run are replayed from
//   TokenTables::idle, starting at the last token that resets them.
// - The ids from the oldest open bracket on live in a ring that grows to the span bound and is
//   trimmed by moving an index: no allocation per token.
// - Completed links go to a flat arena reused across calls (LinkArena); they become DetectedLink
//   named tuples, allocated here through the type's tp_alloc, once the scan is done.
// - push_many reads a 1-d int64 NumPy array in place; anything else goes through the Python
//   converter handed over at construction, which raises the wrapper's errors.
// The GIL is released for calls of kReleaseGil tokens or more; shorter ones take less time than a
// release and re-acquire.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "bindings.h"

namespace py = pybind11;

namespace craft {
namespace {

using i64 = int64_t;
constexpr i64 kReleaseGil = 4096;

enum Kind : uint8_t { EMPTY = 0, PLAIN = 1, SPECIAL = 2 };
enum State : uint8_t { TEXT = 0, AFTER_CLOSE = 1, TARGET = 2 };
// Flag bits of a stream between tokens.
constexpr uint8_t ESC = 1, BANG = 2, NL = 4;

inline bool is_special(unsigned char c) {
    return c == '[' || c == ']' || c == '(' || c == ')' || c == '!' || c == '\\' || c == '\n';
}

// Where a token's bytes are and what they hold: one 8-byte load per token on the slow path.
struct TokenInfo {
    uint32_t off;       // into TokenTables::bytes
    uint32_t len_kind;  // len << 2 | kind
    i64 len() const { return len_kind >> 2; }
    uint8_t kind() const { return len_kind & 3; }
};

struct TokenTables {
    std::string bytes;  // every token's bytes, concatenated
    std::vector<TokenInfo> info;
    // While nothing is open a token without '[' only changes the flags: idle[2 * t + escaped_before]
    // holds keep << 3 | set (flags after = flags & keep | set).
    std::vector<uint8_t> idle;
    std::vector<uint64_t> opens;  // bit t: token t contains '[' (6 KB for GPT-2: stays in L1)

    bool may_open(i64 t) const { return (opens[static_cast<size_t>(t) >> 6] >> (t & 63)) & 1; }

    // The flags after ids[0, n), none of which may open, from `flags` before them. Only the tokens
    // after the last one that sets the flags whatever came before (most tokens do) are replayed.
    uint8_t flags_after(const i64* ids, i64 n, uint8_t flags) const {
        i64 k = n;
        while (k > 0 && !resets(ids[k - 1])) --k;
        uint8_t f = k > 0 ? idle[2 * static_cast<size_t>(ids[k - 1])] : flags;
        for (; k < n; ++k) {
            const uint8_t e = idle[2 * static_cast<size_t>(ids[k]) + (f & ESC)];
            f = static_cast<uint8_t>((f & (e >> 3)) | (e & 7));
        }
        return f;
    }

    explicit TokenTables(const std::vector<py::bytes>& tb) {
        if (tb.size() >= (size_t{1} << 31)) throw py::value_error("token_bytes: at most 2**31 - 1 tokens");
        info.reserve(tb.size());
        idle.reserve(2 * tb.size());
        opens.assign((tb.size() + 63) / 64, 0);
        for (const auto& b : tb) {
            char* p = nullptr;
            py::ssize_t n = 0;
            PYBIND11_BYTES_AS_STRING_AND_SIZE(b.ptr(), &p, &n);
            if (bytes.size() + static_cast<size_t>(n) > UINT32_MAX / 4)
                throw py::value_error("token_bytes: more than 1 GiB of token bytes");
            uint8_t k = n == 0 ? EMPTY : PLAIN;
            bool has_open = false;
            for (py::ssize_t i = 0; i < n; ++i) {
                if (is_special(static_cast<unsigned char>(p[i]))) k = SPECIAL;
                if (p[i] == '[') has_open = true;
            }
            for (int esc_in = 0; esc_in < 2; ++esc_in) {
                if (n == 0) {
                    idle.push_back(static_cast<uint8_t>(7 << 3));  // no bytes: every flag kept
                } else {
                    bool esc = esc_in, bang = false, nl = false;
                    for (py::ssize_t i = 0; i < n; ++i) {  // the flag updates of Stream::text with no opener
                        const unsigned char c = static_cast<unsigned char>(p[i]);
                        if (esc) {
                            esc = bang = nl = false;
                        } else {
                            esc = c == '\\';
                            bang = c == '!';
                            nl = c == '\n';
                        }
                    }
                    idle.push_back(static_cast<uint8_t>(esc * ESC | bang * BANG | nl * NL));
                }
            }
            if (has_open) opens[info.size() >> 6] |= uint64_t{1} << (info.size() & 63);
            info.push_back({static_cast<uint32_t>(bytes.size()), static_cast<uint32_t>(n) << 2 | k});
            bytes.append(p, static_cast<size_t>(n));
        }
    }
    i64 vocab() const { return static_cast<i64>(info.size()); }

   private:
    bool resets(i64 t) const {  // keeps no flag, and the same whether escaped or not
        const uint8_t e0 = idle[2 * static_cast<size_t>(t)], e1 = idle[2 * static_cast<size_t>(t) + 1];
        return e0 == e1 && (e0 >> 3) == 0;
    }
};

struct Limits {
    i64 max_text, max_target, max_openers, max_depth, max_span;
};

struct Opener {
    i64 tok, off, buf;
    bool image;
};

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

// One stream's state machine (see the rules in link_detector.py's module docstring).
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
    }

    bool inside_target() const { return state_ == TARGET; }
    const std::string& target() const { return target_; }

    void push_run(const TokenTables& tt, const Limits& lim, const i64* ids, i64 n, LinkArena& out) {
        i64 i = 0;
        while (i < n) {
            if (state_ == TEXT && openers_.empty()) {  // nothing open: the common case
                const i64 start = i;
                while (i < n && !tt.may_open(ids[i])) ++i;  // independent lookups, no dependency chain
                flags_ = tt.flags_after(ids + start, i - start, flags_);
                pos_ += i - start;
                if (i == n) return;
            }
            push_one(tt, lim, ids[i++], out);
        }
    }

   private:
    void push_one(const TokenTables& tt, const Limits& lim, i64 t, LinkArena& out) {
        if (hist_n_ == 0) hist_first_ = pos_;
        hist_put(t);
        const TokenInfo ti = tt.info[static_cast<size_t>(t)];
        const char* s = tt.bytes.data() + ti.off;
        const i64 n = ti.len();
        if (ti.kind() == SPECIAL) {
            for (i64 k = 0; k < n; ++k) byte(lim, static_cast<unsigned char>(s[k]), k, out);
        } else if (ti.kind() == PLAIN) {
            plain(lim, s, n);
        }
        trim(lim);
        ++pos_;
    }

    bool escaped() const { return flags_ & ESC; }
    void set_escaped(bool e) { flags_ = static_cast<uint8_t>((flags_ & ~ESC) | (e ? ESC : 0)); }

    // A token without special bytes: appended whole to the target or the link text.
    void plain(const Limits& lim, const char* s, i64 n) {
        if (state_ == TARGET) {
            set_escaped(false);
            target_.append(s, static_cast<size_t>(n));
            if (static_cast<i64>(target_.size()) > lim.max_target) abort_target(lim);
            return;
        }
        if (state_ == AFTER_CLOSE) drop_candidate();
        flags_ = 0;
        if (!openers_.empty()) {
            buf_.append(s, static_cast<size_t>(n));
            bound_text(lim);
        }
    }

    void byte(const Limits& lim, unsigned char b, i64 off, LinkArena& out) {
        if (state_ == TARGET) {
            if (escaped()) {
                set_escaped(false);
            } else if (b == '\\') {
                set_escaped(true);
            } else if (b == '\n') {
                abort_target(lim);
                text(lim, b, off);
                return;
            } else if (b == '(') {
                if (++depth_ > lim.max_depth) {
                    abort_target(lim);
                    text(lim, b, off);
                    return;
                }
            } else if (b == ')') {
                if (depth_ == 0) {
                    complete(off, out);
                    return;
                }
                --depth_;
            }
            target_.push_back(static_cast<char>(b));
            if (static_cast<i64>(target_.size()) > lim.max_target) abort_target(lim);
            return;
        }
        if (state_ == AFTER_CLOSE) {
            if (b == '(') {
                state_ = TARGET;
                paren_tok_ = pos_;
                paren_off_ = off;
                target_.clear();
                depth_ = 0;
                set_escaped(false);
                return;
            }
            drop_candidate();
        }
        text(lim, b, off);
    }

    void text(const Limits& lim, unsigned char b, i64 off) {
        if (escaped()) {
            flags_ = 0;
            if (!openers_.empty()) buf_.push_back(static_cast<char>(b));
            bound_text(lim);
            return;
        }
        const bool nl = b == '\n';
        if (b == '\\') {
            set_escaped(true);
            if (!openers_.empty()) buf_.push_back('\\');
        } else if (b == '[') {
            if (openers_.empty())
                buf_.clear();
            else
                buf_.push_back('[');
            openers_.push_back({pos_, off, static_cast<i64>(buf_.size()), (flags_ & BANG) != 0});
            if (static_cast<i64>(openers_.size()) > lim.max_openers) openers_.erase(openers_.begin());
        } else if (b == ']') {
            if (!openers_.empty()) {
                cand_ = openers_.back();
                openers_.pop_back();
                cand_text_.assign(buf_, static_cast<size_t>(cand_.buf), std::string::npos);
                close_tok_ = pos_;
                close_off_ = off;
                state_ = AFTER_CLOSE;
                if (!openers_.empty()) buf_.push_back(']');
            }
        } else if (nl && (flags_ & NL)) {
            openers_.clear();  // a blank line ends every paragraph's openers
        } else if (!openers_.empty()) {
            buf_.push_back(static_cast<char>(b));
        }
        flags_ = static_cast<uint8_t>((flags_ & ESC) | (b == '!' ? BANG : 0) | (nl ? NL : 0));
        bound_text(lim);
    }

    void drop_candidate() {
        state_ = TEXT;
        cand_text_.clear();
    }

    // The target cannot complete: its bytes go back to the enclosing link text (if any).
    void abort_target(const Limits& lim) {
        state_ = TEXT;
        set_escaped(false);
        if (!openers_.empty()) {
            buf_.push_back('(');
            buf_.append(target_);
        }
        target_.clear();
        cand_text_.clear();
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
        return state_ == TEXT ? -1 : cand_.tok;
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

    void complete(i64 off, LinkArena& out) {
        LinkRec r{{cand_.tok, close_tok_, paren_tok_, pos_, cand_.off, close_off_, paren_off_, off},
                  cand_.image, out.bytes.size(), cand_text_.size(), out.bytes.size() + cand_text_.size(),
                  target_.size(), out.ids.size(), static_cast<size_t>(close_tok_ - cand_.tok + 1),
                  static_cast<size_t>(pos_ - paren_tok_ + 1)};
        out.bytes += cand_text_;
        out.bytes += target_;
        for (i64 p = cand_.tok; p <= close_tok_; ++p) out.ids.push_back(hist(p));
        for (i64 p = paren_tok_; p <= pos_; ++p) out.ids.push_back(hist(p));
        out.recs.push_back(r);
        state_ = TEXT;
        flags_ = 0;
        openers_.clear();  // links do not contain links
        buf_.clear();
        target_.clear();
        cand_text_.clear();
    }

    i64 pos_ = 0;
    State state_ = TEXT;
    std::vector<Opener> openers_;
    std::string buf_, target_, cand_text_;
    std::vector<int32_t> ring_;
    i64 hist_first_ = 0, hist_n_ = 0;
    uint8_t flags_ = 0;
    Opener cand_{0, 0, 0, false};
    i64 close_tok_ = 0, close_off_ = 0, paren_tok_ = 0, paren_off_ = 0, depth_ = 0;
};

void check_ids(const i64* p, i64 n, i64 vocab, const char* name) {
    i64 lo = 0, hi = 0;
    for (i64 i = 0; i < n; ++i) {  // vectorised min/max; the message is looked for only on failure
        lo = std::min(lo, p[i]);
        hi = std::max(hi, p[i]);
    }
    if (lo >= 0 && hi < vocab) return;
    for (i64 i = 0; i < n; ++i) {
        if (p[i] < 0)
            throw py::value_error(std::string(name) + ": ids must be >= 0, found " + std::to_string(p[i]) +
                                  " at index " + std::to_string(i));
        if (p[i] >= vocab)
            throw py::value_error(std::string(name) + ": id " + std::to_string(p[i]) + " at index " +
                                  std::to_string(i) + " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
    }
}

Limits make_limits(i64 max_text, i64 max_target, i64 max_openers, i64 max_depth) {
    if (max_text < 0 || max_target < 0 || max_openers < 1 || max_depth < 0)
        throw py::value_error("limits: max_text_bytes, max_target_bytes, max_depth must be >= 0, max_openers >= 1");
    return Limits{max_text, max_target, max_openers, max_depth, max_text + max_target + 8};
}

// What every core shares: the token tables, the limits, the Python side (DetectedLink, the id
// converters) and the cached int objects of token ids (links repeat few distinct ids).
class CoreBase {
   public:
    CoreBase(const std::vector<py::bytes>& token_bytes, i64 max_text, i64 max_target, i64 max_openers, i64 max_depth,
             py::object link_type, py::object as_ids, py::object as_token_id)
        : tt_(token_bytes),
          lim_(make_limits(max_text, max_target, max_openers, max_depth)),
          link_type_(std::move(link_type)),
          as_ids_(std::move(as_ids)),
          as_token_id_(std::move(as_token_id)),
          ints_(tt_.info.size(), nullptr) {
        if (!PyType_Check(link_type_.ptr()) ||
            !PyType_IsSubtype(reinterpret_cast<PyTypeObject*>(link_type_.ptr()), &PyTuple_Type))
            throw py::type_error("link_type: expected a tuple subclass (DetectedLink)");
    }
    CoreBase(const CoreBase&) = delete;
    CoreBase& operator=(const CoreBase&) = delete;
    ~CoreBase() {
        for (PyObject* o : ints_) Py_XDECREF(o);  // destroyed with its Python object, under the GIL
    }

   protected:
    // `obj` as (pointer, length) of int64 ids, converted by as_ids when it is not a 1-d C-contiguous
    // int64 array; `holder` keeps a converted array alive.
    void id_view(py::handle obj, py::object& holder, const i64*& p, i64& n) const {
        if (!view(obj, p, n)) {
            holder = as_ids_(obj);
            if (!view(holder, p, n)) throw py::type_error("ids: the converter did not return a 1-d int64 array");
        }
        check_ids(p, n, tt_.vocab(), "ids");
    }

    i64 token_id(py::handle obj) const {
        if (!PyLong_CheckExact(obj.ptr()))  // the Python checks: TypeError for floats and bools
            return as_token_id_(obj, tt_.vocab()).cast<i64>();
        int overflow = 0;
        const i64 t = PyLong_AsLongLongAndOverflow(obj.ptr(), &overflow);
        if (overflow || t < 0 || t >= tt_.vocab())
            throw py::value_error("token_id: " + py::str(obj).cast<std::string>() + " is outside the vocabulary [0, " +
                                  std::to_string(tt_.vocab()) + ")");
        return t;
    }

    PyObject* new_link(const LinkRec& r, const LinkArena& a) {
        PyObject* items[13] = {};
        bool ok = true;
        for (int k = 0; k < 8; ++k) ok = ok && (items[k] = PyLong_FromLongLong(r.pos[k]));
        ok = ok && (items[8] = PyBytes_FromStringAndSize(a.bytes.data() + r.text_off, r.text_len));
        ok = ok && (items[9] = PyBytes_FromStringAndSize(a.bytes.data() + r.target_off, r.target_len));
        if (ok) items[10] = Py_NewRef(r.image ? Py_True : Py_False);
        ok = ok && (items[11] = id_list(a.ids.data() + r.ids_off, r.n_text_ids));
        ok = ok && (items[12] = id_list(a.ids.data() + r.ids_off + r.n_text_ids, r.n_target_ids));
        auto* type = reinterpret_cast<PyTypeObject*>(link_type_.ptr());
        PyObject* link = ok ? type->tp_alloc(type, 13) : nullptr;
        if (!link) {
            for (PyObject* o : items) Py_XDECREF(o);
            throw py::error_already_set();
        }
        for (int k = 0; k < 13; ++k) PyTuple_SET_ITEM(link, k, items[k]);
        return link;
    }

    py::list links(const LinkArena& a) {
        PyObject* list = PyList_New(static_cast<py::ssize_t>(a.recs.size()));
        if (!list) throw py::error_already_set();
        auto res = py::reinterpret_steal<py::list>(list);
        for (size_t k = 0; k < a.recs.size(); ++k) PyList_SET_ITEM(list, static_cast<py::ssize_t>(k), new_link(a.recs[k], a));
        return res;
    }

    TokenTables tt_;
    Limits lim_;

   private:
    static bool view(py::handle obj, const i64*& p, i64& n) {
        if (!py::array_t<i64>::check_(obj)) return false;
        auto a = py::reinterpret_borrow<py::array>(obj);
        if (a.ndim() != 1 || !(a.flags() & py::array::c_style)) return false;
        p = static_cast<const i64*>(a.data());
        n = a.shape(0);
        return true;
    }

    PyObject* id_list(const int32_t* ids, size_t n) {
        PyObject* list = PyList_New(static_cast<py::ssize_t>(n));
        if (!list) return nullptr;
        for (size_t k = 0; k < n; ++k) {
            PyObject*& o = ints_[static_cast<size_t>(ids[k])];
            if (!o && !(o = PyLong_FromLong(ids[k]))) {
                Py_DECREF(list);
                return nullptr;
            }
            PyList_SET_ITEM(list, static_cast<py::ssize_t>(k), Py_NewRef(o));
        }
        return list;
    }

    py::object link_type_, as_ids_, as_token_id_;
    std::vector<PyObject*> ints_;
};

class LinkDetectorCore : public CoreBase {
   public:
    using CoreBase::CoreBase;

    void reset() { s_.reset(); }
    bool inside_target() const { return s_.inside_target(); }
    py::bytes current_target() const { return py::bytes(s_.inside_target() ? s_.target() : std::string()); }

    py::list push_many(py::handle ids) {
        py::object holder;
        const i64* p = nullptr;
        i64 n = 0;
        id_view(ids, holder, p, n);
        arena_.clear();
        if (n >= kReleaseGil) {
            py::gil_scoped_release nogil;
            s_.push_run(tt_, lim_, p, n, arena_);
        } else {
            s_.push_run(tt_, lim_, p, n, arena_);
        }
        return links(arena_);
    }

    py::object push(py::handle token) {
        const i64 t = token_id(token);
        arena_.clear();
        s_.push_run(tt_, lim_, &t, 1, arena_);
        if (arena_.recs.empty()) return py::none();
        return py::reinterpret_steal<py::object>(new_link(arena_.recs.back(), arena_));
    }

   private:
    Stream s_;
    LinkArena arena_;
};

class BatchLinkDetectorCore : public CoreBase {
   public:
    BatchLinkDetectorCore(const std::vector<py::bytes>& token_bytes, i64 batch, i64 max_text, i64 max_target,
                          i64 max_openers, i64 max_depth, py::object link_type, py::object as_ids,
                          py::object as_token_id)
        : CoreBase(token_bytes, max_text, max_target, max_openers, max_depth, std::move(link_type), std::move(as_ids),
                   std::move(as_token_id)) {
        if (batch < 1) throw py::value_error("batch_size: must be >= 1");
        streams_.resize(static_cast<size_t>(batch));
        last_.resize(static_cast<size_t>(batch));
    }

    py::list push(py::handle ids) {
        py::object holder;
        const i64* p = nullptr;
        i64 n = 0;
        id_view(ids, holder, p, n);
        const i64 b = static_cast<i64>(streams_.size());
        if (n != b)
            throw py::value_error("ids: expected shape (" + std::to_string(b) + ",), one id per stream, got (" +
                                  std::to_string(n) + ",)");
        arena_.clear();
        auto step = [&] {
            for (i64 r = 0; r < b; ++r) {
                const size_t before = arena_.recs.size();
                streams_[static_cast<size_t>(r)].push_run(tt_, lim_, p + r, 1, arena_);
                last_[static_cast<size_t>(r)] = arena_.recs.size() > before ? static_cast<i64>(arena_.recs.size()) - 1 : -1;
            }
        };
        if (b >= kReleaseGil) {
            py::gil_scoped_release nogil;
            step();
        } else {
            step();
        }
        PyObject* list = PyList_New(static_cast<py::ssize_t>(b));
        if (!list) throw py::error_already_set();
        auto res = py::reinterpret_steal<py::list>(list);
        for (i64 r = 0; r < b; ++r) {
            const i64 k = last_[static_cast<size_t>(r)];
            PyList_SET_ITEM(list, static_cast<py::ssize_t>(r),
                            k < 0 ? Py_NewRef(Py_None) : new_link(arena_.recs[static_cast<size_t>(k)], arena_));
        }
        return res;
    }

    void reset_rows(py::array_t<i64, py::array::c_style | py::array::forcecast> rows) {
        const i64 b = static_cast<i64>(streams_.size());
        const i64* p = rows.data();
        for (i64 i = 0; i < rows.size(); ++i)
            if (p[i] < 0 || p[i] >= b)
                throw py::value_error("rows: row " + std::to_string(p[i]) + " is outside [0, " + std::to_string(b) + ")");
        for (i64 i = 0; i < rows.size(); ++i) streams_[static_cast<size_t>(p[i])].reset();
    }

    void reset_all() {
        for (auto& s : streams_) s.reset();
    }

    py::array_t<bool> inside_target() const {
        py::array_t<bool> a(static_cast<py::ssize_t>(streams_.size()));
        bool* m = a.mutable_data();
        for (size_t r = 0; r < streams_.size(); ++r) m[r] = streams_[r].inside_target();
        return a;
    }

    py::list current_targets() const {
        py::list res;
        for (const auto& s : streams_) res.append(py::bytes(s.inside_target() ? s.target() : std::string()));
        return res;
    }

   private:
    std::vector<Stream> streams_;
    std::vector<i64> last_;  // per stream: its last link in arena_ this step, or -1
    LinkArena arena_;
};

}  // namespace

void bind_link_detector(py::module_& m) {
    using Bytes = const std::vector<py::bytes>&;
    py::class_<LinkDetectorCore>(m, "LinkDetectorCore")
        .def(py::init<Bytes, i64, i64, i64, i64, py::object, py::object, py::object>(), py::arg("token_bytes"),
             py::arg("max_text_bytes"), py::arg("max_target_bytes"), py::arg("max_openers"), py::arg("max_depth"),
             py::arg("link_type"), py::arg("as_ids"), py::arg("as_token_id"))
        .def("reset", &LinkDetectorCore::reset)
        .def("push_many", &LinkDetectorCore::push_many, "push_many(ids) -> list[DetectedLink]")
        .def("push", &LinkDetectorCore::push, "push(token_id) -> DetectedLink | None")
        .def_property_readonly("inside_target", &LinkDetectorCore::inside_target)
        .def_property_readonly("current_target_bytes", &LinkDetectorCore::current_target);
    py::class_<BatchLinkDetectorCore>(m, "BatchLinkDetectorCore")
        .def(py::init<Bytes, i64, i64, i64, i64, i64, py::object, py::object, py::object>(), py::arg("token_bytes"),
             py::arg("batch_size"), py::arg("max_text_bytes"), py::arg("max_target_bytes"), py::arg("max_openers"),
             py::arg("max_depth"), py::arg("link_type"), py::arg("as_ids"), py::arg("as_token_id"))
        .def("push", &BatchLinkDetectorCore::push, "push(ids (B,)) -> list[DetectedLink | None]")
        .def("reset_rows", &BatchLinkDetectorCore::reset_rows)
        .def("reset_all", &BatchLinkDetectorCore::reset_all)
        .def_property_readonly("inside_target", &BatchLinkDetectorCore::inside_target)
        .def_property_readonly("current_target_bytes", &BatchLinkDetectorCore::current_targets);
}

}  // namespace craft
