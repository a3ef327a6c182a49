// Incremental markdown link detection over token bytes: the C++ twin of
// craft_kernels/native/link_detector.py (LinkDetectorReference), rule for rule.
//
// The per-token byte tables are built once (TokenTables) and shared by every stream. A token
// without any of []()!\ and newline costs O(1) while no link is open (no history, no buffer),
// and one memcpy while one is.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "bindings.h"

namespace py = pybind11;

namespace craft {
namespace {

using i64 = int64_t;
using IdArray = py::array_t<i64, py::array::c_style | py::array::forcecast>;

enum Kind : uint8_t { EMPTY = 0, PLAIN = 1, SPECIAL = 2 };
enum State : uint8_t { TEXT = 0, AFTER_CLOSE = 1, TARGET = 2 };

inline bool is_special(unsigned char c) {
    return c == '[' || c == ']' || c == '(' || c == ')' || c == '!' || c == '\\' || c == '\n';
}

struct TokenTables {
    std::string bytes;       // every token's bytes, concatenated
    std::vector<i64> off;    // (V + 1,) offsets into bytes
    std::vector<uint8_t> kind;
    // For a special token without '[' read while nothing is open, only the flags change:
    // idle[2 * t + escaped_before] = escaped | prev_bang << 1 | prev_nl << 2 after it, or 255 if it has '['.
    std::vector<uint8_t> idle;

    explicit TokenTables(const std::vector<py::bytes>& tb) {
        off.reserve(tb.size() + 1);
        kind.reserve(tb.size());
        idle.reserve(2 * tb.size());
        off.push_back(0);
        for (const auto& b : tb) {
            char* p = nullptr;
            py::ssize_t n = 0;
            PYBIND11_BYTES_AS_STRING_AND_SIZE(b.ptr(), &p, &n);
            uint8_t k = n == 0 ? EMPTY : PLAIN;
            bool opens = false;
            for (py::ssize_t i = 0; i < n; ++i) {
                if (is_special(static_cast<unsigned char>(p[i]))) k = SPECIAL;
                if (p[i] == '[') opens = true;
            }
            for (int esc_in = 0; esc_in < 2; ++esc_in) {
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
                idle.push_back(opens ? 255 : static_cast<uint8_t>(esc | bang << 1 | nl << 2));
            }
            bytes.append(p, static_cast<size_t>(n));
            off.push_back(static_cast<i64>(bytes.size()));
            kind.push_back(k);
        }
    }
    i64 vocab() const { return static_cast<i64>(kind.size()); }

    // A Python list of token ids, the int objects cached per id (links repeat few distinct ids; GIL held).
    py::list id_list(const std::vector<i64>& ids) const {
        if (ints.empty()) ints.assign(kind.size(), nullptr);
        PyObject* list = PyList_New(static_cast<py::ssize_t>(ids.size()));
        if (!list) throw py::error_already_set();
        for (size_t k = 0; k < ids.size(); ++k) {
            PyObject*& o = ints[static_cast<size_t>(ids[k])];
            if (!o && !(o = PyLong_FromLongLong(ids[k]))) {
                Py_DECREF(list);
                throw py::error_already_set();
            }
            Py_INCREF(o);
            PyList_SET_ITEM(list, static_cast<py::ssize_t>(k), o);
        }
        return py::reinterpret_steal<py::list>(list);
    }

    TokenTables(const TokenTables&) = delete;
    TokenTables& operator=(const TokenTables&) = delete;
    ~TokenTables() {
        for (PyObject* o : ints) Py_XDECREF(o);  // destroyed with its core, under the GIL
    }

    mutable std::vector<PyObject*> ints;
};

struct Limits {
    i64 max_text, max_target, max_openers, max_depth, max_span;
};

struct Opener {
    i64 tok, off, buf;
    bool image;
};

struct Link {
    i64 ob, cb, op, cp, obo, cbo, opo, cpo;
    std::string text, target;
    bool image;
    std::vector<i64> text_ids, target_ids;
};

py::tuple link_tuple(const Link& l, const TokenTables& tt) {
    return py::make_tuple(l.ob, l.cb, l.op, l.cp, l.obo, l.cbo, l.opo, l.cpo, py::bytes(l.text), py::bytes(l.target),
                          l.image, tt.id_list(l.text_ids), tt.id_list(l.target_ids));
}

// One stream's state machine (see the rules in link_detector.py's module docstring).
class Stream {
   public:
    void reset() {
        pos_ = 0;
        state_ = TEXT;
        openers_.clear();
        buf_.clear();
        target_.clear();
        cand_text_.clear();
        hist_.clear();
        hist_first_ = 0;
        escaped_ = prev_bang_ = prev_nl_ = false;
        depth_ = 0;
    }

    bool inside_target() const { return state_ == TARGET; }
    const std::string& target() const { return target_; }

    void push(const TokenTables& tt, const Limits& lim, i64 t, std::vector<Link>& out) {
        const uint8_t kind = tt.kind[static_cast<size_t>(t)];
        if (state_ == TEXT && openers_.empty()) {  // nothing open: the common case
            if (kind == PLAIN) {
                escaped_ = prev_bang_ = prev_nl_ = false;
                ++pos_;
                return;
            }
            if (kind == EMPTY) {
                ++pos_;
                return;
            }
            const uint8_t f = tt.idle[2 * static_cast<size_t>(t) + escaped_];
            if (f != 255) {
                escaped_ = f & 1;
                prev_bang_ = f & 2;
                prev_nl_ = f & 4;
                ++pos_;
                return;
            }
        }
        if (hist_.empty()) hist_first_ = pos_;
        hist_.push_back(t);
        const char* s = tt.bytes.data() + tt.off[static_cast<size_t>(t)];
        const i64 n = tt.off[static_cast<size_t>(t) + 1] - tt.off[static_cast<size_t>(t)];
        if (kind == SPECIAL) {
            for (i64 k = 0; k < n; ++k) byte(lim, static_cast<unsigned char>(s[k]), k, out);
        } else if (kind == PLAIN) {
            plain(lim, s, n);
        }
        trim(lim);
        ++pos_;
    }

   private:
    // A token without special bytes: appended whole to the target or the link text.
    void plain(const Limits& lim, const char* s, i64 n) {
        if (state_ == TARGET) {
            escaped_ = false;
            target_.append(s, static_cast<size_t>(n));
            if (static_cast<i64>(target_.size()) > lim.max_target) abort_target(lim);
            return;
        }
        if (state_ == AFTER_CLOSE) drop_candidate();
        escaped_ = prev_bang_ = prev_nl_ = false;
        if (!openers_.empty()) {
            buf_.append(s, static_cast<size_t>(n));
            bound_text(lim);
        }
    }

    void byte(const Limits& lim, unsigned char b, i64 off, std::vector<Link>& out) {
        if (state_ == TARGET) {
            if (escaped_) {
                escaped_ = false;
            } else if (b == '\\') {
                escaped_ = true;
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
                escaped_ = false;
                return;
            }
            drop_candidate();
        }
        text(lim, b, off);
    }

    void text(const Limits& lim, unsigned char b, i64 off) {
        if (escaped_) {
            escaped_ = false;
            if (!openers_.empty()) buf_.push_back(static_cast<char>(b));
            prev_bang_ = prev_nl_ = false;
            bound_text(lim);
            return;
        }
        const bool nl = b == '\n';
        if (b == '\\') {
            escaped_ = true;
            if (!openers_.empty()) buf_.push_back('\\');
        } else if (b == '[') {
            if (openers_.empty())
                buf_.clear();
            else
                buf_.push_back('[');
            openers_.push_back({pos_, off, static_cast<i64>(buf_.size()), prev_bang_});
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
        } else if (nl && prev_nl_) {
            openers_.clear();  // a blank line ends every paragraph's openers
        } else if (!openers_.empty()) {
            buf_.push_back(static_cast<char>(b));
        }
        prev_bang_ = b == '!';
        prev_nl_ = nl;
        bound_text(lim);
    }

    void drop_candidate() {
        state_ = TEXT;
        cand_text_.clear();
    }

    // The target cannot complete: its bytes go back to the enclosing link text (if any).
    void abort_target(const Limits& lim) {
        state_ = TEXT;
        escaped_ = false;
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
            hist_.clear();
            return;
        }
        while (hist_first_ < keep) {
            hist_.pop_front();
            ++hist_first_;
        }
    }

    std::vector<i64> ids(i64 first, i64 last) const {
        return std::vector<i64>(hist_.begin() + (first - hist_first_), hist_.begin() + (last - hist_first_ + 1));
    }

    void complete(i64 off, std::vector<Link>& out) {
        out.push_back(Link{cand_.tok, close_tok_, paren_tok_, pos_, cand_.off, close_off_, paren_off_, off, cand_text_,
                           target_, cand_.image, ids(cand_.tok, close_tok_), ids(paren_tok_, pos_)});
        state_ = TEXT;
        escaped_ = prev_bang_ = prev_nl_ = false;
        openers_.clear();  // links do not contain links
        buf_.clear();
        target_.clear();
        cand_text_.clear();
    }

    i64 pos_ = 0;
    State state_ = TEXT;
    std::vector<Opener> openers_;
    std::string buf_, target_, cand_text_;
    std::deque<i64> hist_;
    i64 hist_first_ = 0;
    bool escaped_ = false, prev_bang_ = false, prev_nl_ = false;
    Opener cand_{0, 0, 0, false};
    i64 close_tok_ = 0, close_off_ = 0, paren_tok_ = 0, paren_off_ = 0, depth_ = 0;
};

void check_ids(const i64* p, i64 n, i64 vocab, const char* name) {
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

class LinkDetectorCore {
   public:
    LinkDetectorCore(const std::vector<py::bytes>& token_bytes, i64 max_text, i64 max_target, i64 max_openers,
                     i64 max_depth)
        : tt_(std::make_shared<TokenTables>(token_bytes)), lim_(make_limits(max_text, max_target, max_openers, max_depth)) {
        s_.reset();
    }

    void reset() { s_.reset(); }
    bool inside_target() const { return s_.inside_target(); }
    py::bytes current_target() const { return py::bytes(s_.inside_target() ? s_.target() : std::string()); }

    py::list push_many(IdArray ids) {
        if (ids.ndim() != 1) throw py::value_error("ids: expected a 1-d array of token ids");
        std::vector<Link> out;
        const i64* p = ids.data();
        const i64 n = ids.shape(0);
        check_ids(p, n, tt_->vocab(), "ids");
        {
            py::gil_scoped_release nogil;
            for (i64 i = 0; i < n; ++i) s_.push(*tt_, lim_, p[i], out);
        }
        py::list res;
        for (const auto& l : out) res.append(link_tuple(l, *tt_));
        return res;
    }

    py::object push(i64 t) {
        check_ids(&t, 1, tt_->vocab(), "token_id");
        out_.clear();
        s_.push(*tt_, lim_, t, out_);
        if (out_.empty()) return py::none();
        return link_tuple(out_.back(), *tt_);
    }

   private:
    std::shared_ptr<TokenTables> tt_;
    Limits lim_;
    Stream s_;
    std::vector<Link> out_;
};

class BatchLinkDetectorCore {
   public:
    BatchLinkDetectorCore(const std::vector<py::bytes>& token_bytes, i64 batch, i64 max_text, i64 max_target,
                          i64 max_openers, i64 max_depth)
        : tt_(std::make_shared<TokenTables>(token_bytes)), lim_(make_limits(max_text, max_target, max_openers, max_depth)) {
        if (batch < 1) throw py::value_error("batch_size: must be >= 1");
        streams_.resize(static_cast<size_t>(batch));
        for (auto& s : streams_) s.reset();
        out_.resize(static_cast<size_t>(batch));
    }

    py::list push(IdArray ids) {
        const i64 b = static_cast<i64>(streams_.size());
        if (ids.ndim() != 1 || ids.shape(0) != b)
            throw py::value_error("ids: expected shape (" + std::to_string(b) + ",), one id per stream");
        const i64* p = ids.data();
        check_ids(p, b, tt_->vocab(), "ids");
        {
            py::gil_scoped_release nogil;
            for (i64 r = 0; r < b; ++r) {
                out_[static_cast<size_t>(r)].clear();
                streams_[static_cast<size_t>(r)].push(*tt_, lim_, p[r], out_[static_cast<size_t>(r)]);
            }
        }
        py::list res(static_cast<size_t>(b));
        for (i64 r = 0; r < b; ++r) {
            const auto& o = out_[static_cast<size_t>(r)];
            res[static_cast<size_t>(r)] = o.empty() ? py::object(py::none()) : py::object(link_tuple(o.back(), *tt_));
        }
        return res;
    }

    void reset_rows(IdArray rows) {
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
    std::shared_ptr<TokenTables> tt_;
    Limits lim_;
    std::vector<Stream> streams_;
    std::vector<std::vector<Link>> out_;
};

}  // namespace

void bind_link_detector(py::module_& m) {
    py::class_<LinkDetectorCore>(m, "LinkDetectorCore")
        .def(py::init<const std::vector<py::bytes>&, i64, i64, i64, i64>())
        .def("reset", &LinkDetectorCore::reset)
        .def("push_many", &LinkDetectorCore::push_many)
        .def("push", &LinkDetectorCore::push)
        .def_property_readonly("inside_target", &LinkDetectorCore::inside_target)
        .def_property_readonly("current_target_bytes", &LinkDetectorCore::current_target);
    py::class_<BatchLinkDetectorCore>(m, "BatchLinkDetectorCore")
        .def(py::init<const std::vector<py::bytes>&, i64, i64, i64, i64, i64>())
        .def("push", &BatchLinkDetectorCore::push)
        .def("reset_rows", &BatchLinkDetectorCore::reset_rows)
        .def("reset_all", &BatchLinkDetectorCore::reset_all)
        .def_property_readonly("inside_target", &BatchLinkDetectorCore::inside_target)
        .def_property_readonly("current_target_bytes", &BatchLinkDetectorCore::current_targets);
}

}  // namespace craft
