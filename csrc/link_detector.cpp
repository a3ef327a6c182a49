// Incremental markdown link detection over token bytes: the Python-facing cores. The state machine
// is in link_detector_stream.h, the per-token tables in link_detector_tables.h; the specification is
// craft_kernels/native/link_detector.py (LinkDetectorReference).
//
// What makes it fast:
// - A run of tokens read while nothing is open costs one bit test per token (TokenTables::opens);
//   the flags after the run are replayed from the last token that sets them whatever came before.
// - The ids from the oldest open bracket on live in a ring trimmed by moving an index.
// - Completed links go to a flat arena reused across calls; they become DetectedLink named tuples,
//   allocated here through the type's tp_alloc, once the scan is done (or arrays: push_many_arrays).
// What makes it safe:
// - One mutex per core: calls from several threads run one at a time. A thread that finds the core
//   busy waits with the GIL released (so the holder can finish); a re-entrant call from the thread
//   holding it (a converter or finalizer calling back) raises instead of deadlocking.
// - The ids are copied (and checked) into a buffer the core owns before it reads them, so another
//   thread writing to or resizing the caller's array cannot make it read out of bounds.
// The GIL is released for calls of kReleaseGil tokens or more.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <atomic>
#include <mutex>
#include <thread>

#include "bindings.h"
#include "link_detector_stream.h"

namespace py = pybind11;

namespace craft {
namespace link_detector {
namespace {

constexpr i64 kReleaseGil = 4096;
constexpr i64 kMaxBatch = i64{1} << 20;     // BatchLinkDetector's MAX_BATCH
constexpr size_t kKeepIdBuffer = 1 << 20;   // ids kept allocated between calls

Limits make_limits(i64 max_text, i64 max_target, i64 max_openers, i64 max_depth, bool skip_code) {
    if (max_text < 0 || max_target < 0 || max_openers < 1 || max_depth < 0)
        throw py::value_error("limits: max_text_bytes, max_target_bytes, max_depth must be >= 0, max_openers >= 1");
    return Limits{max_text, max_target, max_openers, max_depth, span_bound(max_text, max_target), skip_code};
}

// Holds a core's mutex for one call (see the header comment).
class CallGuard {
   public:
    CallGuard(std::mutex& mu, std::atomic<std::thread::id>& owner, const char* what)
        : lock_(mu, std::try_to_lock), owner_(owner) {
        if (!lock_.owns_lock()) {
            if (owner_.load() == std::this_thread::get_id())
                throw py::value_error(std::string(what) +
                                      ": called again from the thread already inside a call on it (from an ids "
                                      "converter or a finalizer); call it after that call returns");
            py::gil_scoped_release nogil;
            lock_.lock();
        }
        owner_.store(std::this_thread::get_id());
    }
    ~CallGuard() { owner_.store(std::thread::id()); }

   private:
    std::unique_lock<std::mutex> lock_;
    std::atomic<std::thread::id>& owner_;
};

// What every core shares: the token tables, the limits, the Python side (DetectedLink, the id
// converters), the lock, the id buffer and the cached int objects of token ids.
class CoreBase {
   public:
    CoreBase(const std::vector<py::bytes>& token_bytes, i64 max_text, i64 max_target, i64 max_openers, i64 max_depth,
             bool skip_code, py::object link_type, py::object as_ids, py::object as_token_id, const char* name)
        : tt_(token_bytes, skip_code),
          lim_(make_limits(max_text, max_target, max_openers, max_depth, skip_code)),
          name_(name),
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
    CallGuard guard() { return CallGuard(mu_, owner_, name_); }

    // `obj`'s ids copied into ids_ and checked (converted by as_ids when it is not a 1-d C-contiguous
    // int64 array). Call under the guard.
    const i64* copy_ids(py::handle obj, i64& n) {
        py::object holder;
        const i64* p = nullptr;
        if (!view(obj, p, n)) {
            holder = as_ids_(obj);
            if (!view(holder, p, n)) throw py::type_error("ids: the converter did not return a 1-d int64 array");
        }
        ids_.resize(static_cast<size_t>(n));
        i64* q = ids_.data();
        i64 lo = 0, hi = 0;
        for (i64 i = 0; i < n; ++i) {  // one pass: copy, and min/max of the copy (vectorised)
            const i64 v = p[i];
            q[i] = v;
            lo = std::min(lo, v);
            hi = std::max(hi, v);
        }
        if (lo < 0 || hi >= tt_.vocab()) check_ids(q, n);  // finds the offending index for the message
        return q;
    }
    void release_ids() {
        if (ids_.capacity() > kKeepIdBuffer) std::vector<i64>().swap(ids_);
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

    // (positions (n, 4), offsets (n, 4), is_image (n,), text bytes, text offsets (n + 1,), target bytes,
    // target offsets (n + 1,)): the fields of LinkArrays, seven objects whatever n is.
    static py::tuple arrays(const LinkArena& a) {
        const auto n = static_cast<py::ssize_t>(a.recs.size());
        py::array_t<i64> pos({n, py::ssize_t{4}}), off({n, py::ssize_t{4}}), text_off(n + 1), target_off(n + 1);
        py::array_t<bool> image(n);
        i64 *pp = pos.mutable_data(), *po = off.mutable_data(), *pt = text_off.mutable_data(),
            *pg = target_off.mutable_data();
        bool* pi = image.mutable_data();
        std::string text, target;
        pt[0] = pg[0] = 0;
        for (py::ssize_t k = 0; k < n; ++k) {
            const LinkRec& r = a.recs[static_cast<size_t>(k)];
            std::copy(r.pos, r.pos + 4, pp + 4 * k);
            std::copy(r.pos + 4, r.pos + 8, po + 4 * k);
            pi[k] = r.image;
            text.append(a.bytes, r.text_off, r.text_len);
            target.append(a.bytes, r.target_off, r.target_len);
            pt[k + 1] = static_cast<i64>(text.size());
            pg[k + 1] = static_cast<i64>(target.size());
        }
        return py::make_tuple(pos, off, image, py::bytes(text), text_off, py::bytes(target), target_off);
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

    void check_ids(const i64* p, i64 n) const {
        const i64 vocab = tt_.vocab();
        for (i64 i = 0; i < n; ++i) {
            if (p[i] < 0)
                throw py::value_error("ids: ids must be >= 0, found " + std::to_string(p[i]) + " at index " +
                                      std::to_string(i));
            if (p[i] >= vocab)
                throw py::value_error("ids: id " + std::to_string(p[i]) + " at index " + std::to_string(i) +
                                      " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
        }
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

    std::mutex mu_;
    std::atomic<std::thread::id> owner_{};
    const char* name_;
    std::vector<i64> ids_;
    py::object link_type_, as_ids_, as_token_id_;
    std::vector<PyObject*> ints_;
};

class LinkDetectorCore : public CoreBase {
   public:
    LinkDetectorCore(const std::vector<py::bytes>& token_bytes, i64 max_text, i64 max_target, i64 max_openers,
                     i64 max_depth, bool skip_code, py::object link_type, py::object as_ids, py::object as_token_id)
        : CoreBase(token_bytes, max_text, max_target, max_openers, max_depth, skip_code, std::move(link_type),
                   std::move(as_ids), std::move(as_token_id), "LinkDetector") {}

    void reset() {
        auto g = guard();
        s_.reset();
    }
    bool inside_target() {
        auto g = guard();
        return s_.inside_target();
    }
    py::bytes current_target() {
        auto g = guard();
        return py::bytes(s_.inside_target() ? s_.target() : std::string());
    }

    py::list push_many(py::handle ids) {
        auto g = guard();
        run(ids);
        return links(arena_);
    }

    py::tuple push_many_arrays(py::handle ids) {
        auto g = guard();
        run(ids);
        return arrays(arena_);
    }

    py::object push(py::handle token) {
        auto g = guard();
        const i64 t = token_id(token);
        arena_.clear();
        s_.push_run(tt_, lim_, &t, 1, arena_);
        if (arena_.recs.empty()) return py::none();
        return py::reinterpret_steal<py::object>(new_link(arena_.recs.back(), arena_));
    }

   private:
    void run(py::handle ids) {  // under the guard
        i64 n = 0;
        const i64* p = copy_ids(ids, n);
        arena_.clear();
        if (n >= kReleaseGil) {
            py::gil_scoped_release nogil;
            s_.push_run(tt_, lim_, p, n, arena_);
        } else {
            s_.push_run(tt_, lim_, p, n, arena_);
        }
        release_ids();
    }

    Stream s_;
    LinkArena arena_;
};

class BatchLinkDetectorCore : public CoreBase {
   public:
    BatchLinkDetectorCore(const std::vector<py::bytes>& token_bytes, i64 batch, i64 max_text, i64 max_target,
                          i64 max_openers, i64 max_depth, bool skip_code, py::object link_type, py::object as_ids,
                          py::object as_token_id)
        : CoreBase(token_bytes, max_text, max_target, max_openers, max_depth, skip_code, std::move(link_type),
                   std::move(as_ids), std::move(as_token_id), "BatchLinkDetector") {
        if (batch < 1 || batch > kMaxBatch)
            throw py::value_error("batch_size: must be in [1, " + std::to_string(kMaxBatch) + "], got " +
                                  std::to_string(batch));
        streams_.resize(static_cast<size_t>(batch));
        last_.resize(static_cast<size_t>(batch));
    }

    py::list push(py::handle ids) {
        auto g = guard();
        i64 n = 0;
        const i64* p = copy_ids(ids, n);
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
        auto g = guard();
        const std::vector<i64> r(rows.data(), rows.data() + rows.size());  // a copy: checked, then used
        const i64 b = static_cast<i64>(streams_.size());
        for (const i64 x : r)
            if (x < 0 || x >= b)
                throw py::value_error("rows: row " + std::to_string(x) + " is outside [0, " + std::to_string(b) + ")");
        for (const i64 x : r) streams_[static_cast<size_t>(x)].reset();
    }

    void reset_all() {
        auto g = guard();
        for (auto& s : streams_) s.reset();
    }

    py::array_t<bool> inside_target() {
        auto g = guard();
        py::array_t<bool> a(static_cast<py::ssize_t>(streams_.size()));
        bool* m = a.mutable_data();
        for (size_t r = 0; r < streams_.size(); ++r) m[r] = streams_[r].inside_target();
        return a;
    }

    py::list current_targets() {
        auto g = guard();
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
}  // namespace link_detector

void bind_link_detector(py::module_& m) {
    using link_detector::BatchLinkDetectorCore;
    using link_detector::i64;
    using link_detector::LinkDetectorCore;
    using Bytes = const std::vector<py::bytes>&;
    py::class_<LinkDetectorCore>(m, "LinkDetectorCore")
        .def(py::init<Bytes, i64, i64, i64, i64, bool, py::object, py::object, py::object>(), py::arg("token_bytes"),
             py::arg("max_text_bytes"), py::arg("max_target_bytes"), py::arg("max_openers"), py::arg("max_depth"),
             py::arg("skip_code"), py::arg("link_type"), py::arg("as_ids"), py::arg("as_token_id"))
        .def("reset", &LinkDetectorCore::reset)
        .def("push_many", &LinkDetectorCore::push_many, "push_many(ids) -> list[DetectedLink]")
        .def("push_many_arrays", &LinkDetectorCore::push_many_arrays, "push_many_arrays(ids) -> LinkArrays fields")
        .def("push", &LinkDetectorCore::push, "push(token_id) -> DetectedLink | None")
        .def_property_readonly("inside_target", &LinkDetectorCore::inside_target)
        .def_property_readonly("current_target_bytes", &LinkDetectorCore::current_target);
    py::class_<BatchLinkDetectorCore>(m, "BatchLinkDetectorCore")
        .def(py::init<Bytes, i64, i64, i64, i64, i64, bool, py::object, py::object, py::object>(),
             py::arg("token_bytes"), py::arg("batch_size"), py::arg("max_text_bytes"), py::arg("max_target_bytes"),
             py::arg("max_openers"), py::arg("max_depth"), py::arg("skip_code"), py::arg("link_type"),
             py::arg("as_ids"), py::arg("as_token_id"))
        .def("push", &BatchLinkDetectorCore::push, "push(ids (B,)) -> list[DetectedLink | None]")
        .def("reset_rows", &BatchLinkDetectorCore::reset_rows)
        .def("reset_all", &BatchLinkDetectorCore::reset_all)
        .def_property_readonly("inside_target", &BatchLinkDetectorCore::inside_target)
        .def_property_readonly("current_target_bytes", &BatchLinkDetectorCore::current_targets);
}

}  // namespace craft
