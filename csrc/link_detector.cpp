// Incremental markdown link detection over token bytes: the C++ twin of
// craft_kernels/native/link_detector.py (LinkDetectorReference), rule for rule.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <vector>

#include "bindings.h"

namespace py = pybind11;

namespace craft {
namespace {

enum State { TEXT = 0, AFTER_CLOSE = 1, TARGET = 2 };

struct Opener {
    int64_t tok, off, buf;
    bool image;
};

struct Link {
    int64_t ob, cb, op, cp, obo, cbo, opo, cpo;
    std::string text, target;
    bool image;
    std::vector<int64_t> text_ids, target_ids;
};

class LinkDetectorCore {
   public:
    LinkDetectorCore(const std::vector<py::bytes>& token_bytes, int64_t max_text, int64_t max_target,
                     int64_t max_openers, int64_t max_depth)
        : max_text_(max_text), max_target_(max_target), max_openers_(max_openers), max_depth_(max_depth) {
        tb_.reserve(token_bytes.size());
        special_.reserve(token_bytes.size());
        for (const auto& b : token_bytes) {
            std::string s = b;
            bool sp = false;
            for (unsigned char c : s)
                if (c == '[' || c == ']' || c == '(' || c == ')' || c == '!' || c == '\\' || c == '\n') sp = true;
            tb_.push_back(std::move(s));
            special_.push_back(sp);
        }
        reset();
    }

    void reset() {
        pos_ = 0;
        state_ = TEXT;
        openers_.clear();
        buf_.clear();
        hist_.clear();
        escaped_ = prev_bang_ = prev_nl_ = false;
        has_cand_ = false;
        target_.clear();
        depth_ = 0;
    }

    bool inside_target() const { return state_ == TARGET; }
    py::bytes current_target() const { return py::bytes(state_ == TARGET ? target_ : std::string()); }

    py::list push_many(py::array_t<int64_t, py::array::c_style | py::array::forcecast> ids) {
        std::vector<Link> out;
        const int64_t* p = ids.data();
        const int64_t n = ids.size();
        {
            py::gil_scoped_release nogil;
            for (int64_t i = 0; i < n; ++i) push_one(p[i], out);
        }
        py::list res;
        for (auto& l : out) {
            res.append(py::make_tuple(l.ob, l.cb, l.op, l.cp, l.obo, l.cbo, l.opo, l.cpo, py::bytes(l.text),
                                      py::bytes(l.target), l.image, l.text_ids, l.target_ids));
        }
        return res;
    }

    py::object push(int64_t t) {
        std::vector<Link> out;
        push_one(t, out);
        if (out.empty()) return py::none();
        Link& l = out.back();
        return py::make_tuple(l.ob, l.cb, l.op, l.cp, l.obo, l.cbo, l.opo, l.cpo, py::bytes(l.text),
                              py::bytes(l.target), l.image, l.text_ids, l.target_ids);
    }

   private:
    void push_one(int64_t t, std::vector<Link>& out) {
        hist_.emplace_back(pos_, t);
        if (state_ == TEXT && openers_.empty() && !special_[t]) {
            escaped_ = prev_bang_ = prev_nl_ = false;
        } else {
            const std::string& s = tb_[t];
            for (size_t off = 0; off < s.size(); ++off) byte(static_cast<unsigned char>(s[off]), off, out);
        }
        ++pos_;
        const int64_t keep = oldest_needed();
        while (!hist_.empty() && hist_.front().first < keep) hist_.pop_front();
    }

    int64_t oldest_needed() const {
        if (state_ != TEXT && has_cand_) return cand_op_.tok;
        return openers_.empty() ? pos_ + 1 : openers_.front().tok;
    }

    void byte(unsigned char b, int64_t off, std::vector<Link>& out) {
        const int64_t tok = pos_;
        if (state_ == TARGET) {
            if (escaped_) {
                escaped_ = false;
            } else if (b == '\\') {
                escaped_ = true;
            } else if (b == '\n') {
                abort();
                text(b, off, tok);
                return;
            } else if (b == '(') {
                if (++depth_ > max_depth_) {
                    abort();
                    text(b, off, tok);
                    return;
                }
            } else if (b == ')') {
                if (depth_ == 0) {
                    complete(tok, off, out);
                    return;
                }
                --depth_;
            }
            target_.push_back(static_cast<char>(b));
            if (static_cast<int64_t>(target_.size()) > max_target_) abort();
            return;
        }
        if (state_ == AFTER_CLOSE) {
            if (b == '(') {
                state_ = TARGET;
                paren_tok_ = tok;
                paren_off_ = off;
                target_.clear();
                depth_ = 0;
                return;
            }
            state_ = TEXT;
            has_cand_ = false;
        }
        text(b, off, tok);
    }

    void abort() {
        state_ = TEXT;
        has_cand_ = false;
        target_.clear();
        escaped_ = false;
    }

    void text(unsigned char b, int64_t off, int64_t tok) {
        if (escaped_) {
            escaped_ = false;
            if (!openers_.empty()) buf_.push_back(static_cast<char>(b));
            prev_bang_ = prev_nl_ = false;
            return;
        }
        const bool nl = b == '\n';
        if (b == '\\') {
            escaped_ = true;
            if (!openers_.empty()) buf_.push_back('\\');
        } else if (b == '[') {
            if (!openers_.empty())
                buf_.push_back('[');
            else
                buf_.clear();
            openers_.push_back({tok, off, static_cast<int64_t>(buf_.size()), prev_bang_});
            if (static_cast<int64_t>(openers_.size()) > max_openers_) openers_.pop_front();
        } else if (b == ']') {
            if (!openers_.empty()) {
                cand_op_ = openers_.back();
                openers_.pop_back();
                cand_text_ = buf_.substr(static_cast<size_t>(cand_op_.buf));
                cand_tok_ = tok;
                cand_off_ = off;
                has_cand_ = true;
                state_ = AFTER_CLOSE;
                if (!openers_.empty()) buf_.push_back(']');
            }
        } else if (nl && prev_nl_) {
            openers_.clear();
        } else if (!openers_.empty()) {
            buf_.push_back(static_cast<char>(b));
        }
        prev_bang_ = b == '!';
        prev_nl_ = nl;
        bound_text();
    }

    void bound_text() {
        while (!openers_.empty() && static_cast<int64_t>(buf_.size()) - openers_.front().buf > max_text_)
            openers_.pop_front();
        if (openers_.empty() && state_ == TEXT) {
            buf_.clear();
        } else if (!openers_.empty() && openers_.front().buf > max_text_) {
            const int64_t cut = openers_.front().buf;
            buf_.erase(0, static_cast<size_t>(cut));
            for (auto& o : openers_) o.buf -= cut;
        }
    }

    std::vector<int64_t> ids(int64_t first, int64_t last) const {
        std::vector<int64_t> v;
        for (const auto& h : hist_)
            if (h.first >= first && h.first <= last) v.push_back(h.second);
        return v;
    }

    void complete(int64_t tok, int64_t off, std::vector<Link>& out) {
        Link l{cand_op_.tok, cand_tok_, paren_tok_, tok, cand_op_.off, cand_off_, paren_off_, off,
               cand_text_, target_, cand_op_.image, ids(cand_op_.tok, cand_tok_), ids(paren_tok_, tok)};
        out.push_back(std::move(l));
        abort();
        openers_.clear();
        buf_.clear();
        prev_bang_ = prev_nl_ = false;
    }

    std::vector<std::string> tb_;
    std::vector<bool> special_;
    int64_t max_text_, max_target_, max_openers_, max_depth_;
    int64_t pos_ = 0;
    State state_ = TEXT;
    std::deque<Opener> openers_;
    std::string buf_, target_, cand_text_;
    std::deque<std::pair<int64_t, int64_t>> hist_;
    bool escaped_ = false, prev_bang_ = false, prev_nl_ = false, has_cand_ = false;
    Opener cand_op_{0, 0, 0, false};
    int64_t cand_tok_ = 0, cand_off_ = 0, paren_tok_ = 0, paren_off_ = 0, depth_ = 0;
};

}  // namespace

void bind_link_detector(py::module_& m) {
    py::class_<LinkDetectorCore>(m, "LinkDetectorCore")
        .def(py::init<const std::vector<py::bytes>&, int64_t, int64_t, int64_t, int64_t>())
        .def("reset", &LinkDetectorCore::reset)
        .def("push_many", &LinkDetectorCore::push_many)
        .def("push", &LinkDetectorCore::push)
        .def_property_readonly("inside_target", &LinkDetectorCore::inside_target)
        .def_property_readonly("current_target_bytes", &LinkDetectorCore::current_target);
}

}  // namespace craft
