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
#include <cstring>
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
        PyObject* link = new_link_raw(r, a.bytes.data(), a.ids.data());
        if (!link) throw py::error_already_set();
        return link;
    }

   public:
    // A DetectedLink from a record whose bytes and ids live at `bytes` / `ids` (new reference, or
    // nullptr with the Python error set). Under the GIL; LinkList calls it when a link is read.
    PyObject* new_link_raw(const LinkRec& r, const char* bytes, const int32_t* ids) {
        PyObject* items[13] = {};
        bool ok = true;
        for (int k = 0; k < 8; ++k) ok = ok && (items[k] = PyLong_FromLongLong(r.pos[k]));
        ok = ok && (items[8] = PyBytes_FromStringAndSize(bytes + r.text_off, static_cast<py::ssize_t>(r.text_len)));
        ok = ok && (items[9] = PyBytes_FromStringAndSize(bytes + r.target_off, static_cast<py::ssize_t>(r.target_len)));
        if (ok) items[10] = Py_NewRef(r.image ? Py_True : Py_False);
        ok = ok && (items[11] = id_list(ids + r.ids_off, r.n_text_ids));
        ok = ok && (items[12] = id_list(ids + r.ids_off + r.n_text_ids, r.n_target_ids));
        auto* type = reinterpret_cast<PyTypeObject*>(link_type_.ptr());
        PyObject* link = ok ? type->tp_alloc(type, 13) : nullptr;
        if (!link) {
            for (PyObject* o : items) Py_XDECREF(o);
            return nullptr;
        }
        for (int k = 0; k < 13; ++k) PyTuple_SET_ITEM(link, k, items[k]);
        return link;
    }

   protected:

    py::list links(const LinkArena& a) {
        PyObject* list = PyList_New(static_cast<py::ssize_t>(a.recs.size()));
        if (!list) throw py::error_already_set();
        auto res = py::reinterpret_steal<py::list>(list);
        for (size_t k = 0; k < a.recs.size(); ++k) PyList_SET_ITEM(list, static_cast<py::ssize_t>(k), new_link(a.recs[k], a));
        return res;
    }

    // (positions (n, 4), offsets (n, 4), is_image (n,), text bytes, text offsets (n + 1,), target bytes,
    // target offsets (n + 1,)): the fields of LinkArrays, seven objects whatever n is.
    static py::tuple arrays(const LinkArena& a) { return arrays_raw(a.recs.data(), a.recs.size(), a.bytes.data()); }

   public:
    static py::tuple arrays_raw(const LinkRec* recs, size_t n_recs, const char* bytes) {
        const auto n = static_cast<py::ssize_t>(n_recs);
        py::array_t<i64> pos({n, py::ssize_t{4}}), off({n, py::ssize_t{4}}), text_off(n + 1), target_off(n + 1);
        py::array_t<bool> image(n);
        i64 *pp = pos.mutable_data(), *po = off.mutable_data(), *pt = text_off.mutable_data(),
            *pg = target_off.mutable_data();
        bool* pi = image.mutable_data();
        std::string text, target;
        pt[0] = pg[0] = 0;
        for (py::ssize_t k = 0; k < n; ++k) {
            const LinkRec& r = recs[static_cast<size_t>(k)];
            std::copy(r.pos, r.pos + 4, pp + 4 * k);
            std::copy(r.pos + 4, r.pos + 8, po + 4 * k);
            pi[k] = r.image;
            text.append(bytes + r.text_off, r.text_len);
            target.append(bytes + r.target_off, r.target_len);
            pt[k + 1] = static_cast<i64>(text.size());
            pg[k + 1] = static_cast<i64>(target.size());
        }
        return py::make_tuple(pos, off, image, py::bytes(text), text_off, py::bytes(target), target_off);
    }

   protected:
    TokenTables tt_;
    Limits lim_;

   private:
    static bool view(py::handle obj, const i64*& p, i64& n) {
        if (int64_row(obj.ptr(), p, n)) return true;
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

    // push_many's result as a LinkList (new reference): no Python object per link until one is read.
    PyObject* push_many_list(PyObject* ids, PyObject* owner);

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

// ---- LinkList: the links of one push_many call, kept as records (one allocation, whatever the
// number of links); each DetectedLink is built when it is read (indexing, iteration, comparison,
// concatenation), so streaming wakes the garbage collector once per call at most, not once per
// link. An immutable sequence: len, [k] / slices, iteration, == and + with lists, arrays().
struct LinkListObject {
    PyObject_VAR_HEAD
    PyObject* owner;  // the core's Python object (keeps `base` alive); nullptr when empty
    CoreBase* base;
    Py_ssize_t n;
    LinkRec* recs;
    int32_t* ids;
    char* bytes;
};
PyTypeObject* g_link_list = nullptr;
PyObject* g_empty_links = nullptr;

PyObject* link_list_new(const LinkArena& a, PyObject* owner, CoreBase* base) {
    const size_t nr = a.recs.size();
    if (nr == 0) return Py_NewRef(g_empty_links);
    const size_t head = (sizeof(LinkListObject) + 7) / 8 * 8;
    const size_t rec_bytes = nr * sizeof(LinkRec), id_bytes = a.ids.size() * sizeof(int32_t);
    const size_t extra = head - sizeof(LinkListObject) + rec_bytes + id_bytes + a.bytes.size();
    auto* o = PyObject_NewVar(LinkListObject, g_link_list, static_cast<Py_ssize_t>(extra));
    if (!o) return nullptr;
    char* store = reinterpret_cast<char*>(o) + head;
    o->owner = Py_NewRef(owner);
    o->base = base;
    o->n = static_cast<Py_ssize_t>(nr);
    o->recs = reinterpret_cast<LinkRec*>(store);
    o->ids = reinterpret_cast<int32_t*>(store + rec_bytes);
    o->bytes = store + rec_bytes + id_bytes;
    std::memcpy(o->recs, a.recs.data(), rec_bytes);
    if (id_bytes) std::memcpy(o->ids, a.ids.data(), id_bytes);
    if (!a.bytes.empty()) std::memcpy(o->bytes, a.bytes.data(), a.bytes.size());
    return reinterpret_cast<PyObject*>(o);
}

void link_list_dealloc(PyObject* self) {
    auto* o = reinterpret_cast<LinkListObject*>(self);
    PyTypeObject* type = Py_TYPE(self);
    Py_XDECREF(o->owner);
    type->tp_free(self);
    Py_DECREF(type);
}

Py_ssize_t link_list_len(PyObject* self) { return reinterpret_cast<LinkListObject*>(self)->n; }

PyObject* link_list_item(PyObject* self, Py_ssize_t k) {
    auto* o = reinterpret_cast<LinkListObject*>(self);
    if (k < 0 || k >= o->n) {
        PyErr_SetString(PyExc_IndexError, "LinkList index out of range");
        return nullptr;
    }
    return o->base->new_link_raw(o->recs[k], o->bytes, o->ids);
}

PyObject* link_list_materialize(PyObject* self) {  // list[DetectedLink]
    auto* o = reinterpret_cast<LinkListObject*>(self);
    PyObject* list = PyList_New(o->n);
    if (!list) return nullptr;
    for (Py_ssize_t k = 0; k < o->n; ++k) {
        PyObject* l = o->base->new_link_raw(o->recs[k], o->bytes, o->ids);
        if (!l) {
            Py_DECREF(list);
            return nullptr;
        }
        PyList_SET_ITEM(list, k, l);
    }
    return list;
}

PyObject* link_list_subscript(PyObject* self, PyObject* key) {
    if (PyIndex_Check(key)) {
        Py_ssize_t k = PyNumber_AsSsize_t(key, PyExc_IndexError);
        if (k == -1 && PyErr_Occurred()) return nullptr;
        if (k < 0) k += reinterpret_cast<LinkListObject*>(self)->n;
        return link_list_item(self, k);
    }
    PyObject* list = link_list_materialize(self);
    if (!list) return nullptr;
    PyObject* r = PyObject_GetItem(list, key);
    Py_DECREF(list);
    return r;
}

// A list of the links for a LinkList, a new reference to any other object.
PyObject* as_list(PyObject* x) {
    return Py_TYPE(x) == g_link_list ? link_list_materialize(x) : Py_NewRef(x);
}

PyObject* link_list_richcompare(PyObject* a, PyObject* b, int op) {
    PyObject *la = as_list(a), *lb = la ? as_list(b) : nullptr;
    PyObject* r = lb ? PyObject_RichCompare(la, lb, op) : nullptr;
    Py_XDECREF(la);
    Py_XDECREF(lb);
    return r;
}

PyObject* link_list_add(PyObject* a, PyObject* b) {  // with a list or another LinkList: a list
    const bool ok_a = Py_TYPE(a) == g_link_list || PyList_Check(a), ok_b = Py_TYPE(b) == g_link_list || PyList_Check(b);
    if (!ok_a || !ok_b) Py_RETURN_NOTIMPLEMENTED;
    PyObject *la = as_list(a), *lb = la ? as_list(b) : nullptr;
    PyObject* r = lb ? PySequence_Concat(la, lb) : nullptr;
    Py_XDECREF(la);
    Py_XDECREF(lb);
    return r;
}

PyObject* link_list_repr(PyObject* self) {
    PyObject* list = link_list_materialize(self);
    if (!list) return nullptr;
    PyObject* r = PyObject_Repr(list);
    Py_DECREF(list);
    return r;
}

PyObject* link_list_arrays(PyObject* self, PyObject*) {
    auto* o = reinterpret_cast<LinkListObject*>(self);
    try {
        return CoreBase::arrays_raw(o->recs, static_cast<size_t>(o->n), o->bytes).release().ptr();
    } catch (py::error_already_set& e) {
        e.restore();
    } catch (const std::exception& e) {
        PyErr_SetString(PyExc_RuntimeError, e.what());
    }
    return nullptr;
}

PyMethodDef kLinkListMethods[] = {
    {"arrays", reinterpret_cast<PyCFunction>(&link_list_arrays), METH_NOARGS,
     "The fields of LinkArrays (positions, offsets, is_image, text bytes, text offsets, target bytes, target offsets)."},
    {nullptr, nullptr, 0, nullptr}};

PyType_Slot kLinkListSlots[] = {
    {Py_tp_dealloc, reinterpret_cast<void*>(&link_list_dealloc)},
    {Py_sq_length, reinterpret_cast<void*>(&link_list_len)},
    {Py_sq_item, reinterpret_cast<void*>(&link_list_item)},
    {Py_mp_length, reinterpret_cast<void*>(&link_list_len)},
    {Py_mp_subscript, reinterpret_cast<void*>(&link_list_subscript)},
    {Py_tp_richcompare, reinterpret_cast<void*>(&link_list_richcompare)},
    {Py_nb_add, reinterpret_cast<void*>(&link_list_add)},
    {Py_tp_repr, reinterpret_cast<void*>(&link_list_repr)},
    {Py_tp_hash, reinterpret_cast<void*>(&PyObject_HashNotImplemented)},
    {Py_tp_methods, kLinkListMethods},
    {Py_tp_doc, const_cast<char*>("The links of one push_many call: a sequence of DetectedLink, each built when read.")},
    {0, nullptr}};

PyType_Spec kLinkListSpec = {"craft_kernels._C.LinkList", static_cast<int>(sizeof(LinkListObject)), 1,
                             Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION, kLinkListSlots};

PyObject* LinkDetectorCore::push_many_list(PyObject* ids, PyObject* owner) {
    auto g = guard();
    run(py::handle(ids));
    return link_list_new(arena_, owner, this);
}

// push_many as a builtin function bound to one core (no pybind11 dispatch): fn(ids) -> LinkList.
struct FastPush {
    PyObject* owner;
    LinkDetectorCore* core;
};
constexpr const char* kFastPushName = "craft.link_detector.fast_push";

void fast_push_free(PyObject* cap) {
    auto* c = static_cast<FastPush*>(PyCapsule_GetPointer(cap, kFastPushName));
    if (!c) return;
    Py_XDECREF(c->owner);
    delete c;
}

PyObject* fast_push_call(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
    auto* c = static_cast<FastPush*>(PyCapsule_GetPointer(self, kFastPushName));
    if (!c) return nullptr;
    PyObject* ids = nullptr;
    if (nargs == 1 && !kwnames) {
        ids = args[0];
    } else if (nargs == 0 && kwnames && PyTuple_GET_SIZE(kwnames) == 1 &&
               PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "ids") == 0) {
        ids = args[0];
    } else {
        PyErr_SetString(PyExc_TypeError, "push_many(ids): expected one argument, the (n,) token ids");
        return nullptr;
    }
    try {
        return c->core->push_many_list(ids, c->owner);
    } catch (py::error_already_set& e) {
        e.restore();
    } catch (const py::builtin_exception& e) {
        e.set_error();
    } catch (const std::exception& e) {
        PyErr_SetString(PyExc_RuntimeError, e.what());
    }
    return nullptr;
}

PyMethodDef kFastPushDef = {"push_many", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&fast_push_call)),
                            METH_FASTCALL | METH_KEYWORDS,
                            "push_many(ids) -> LinkList: the links the ids complete (DetectedLinks built when read)"};

py::object fast_push_many(py::object core) {
    auto* c = new FastPush{core.ptr(), core.cast<LinkDetectorCore*>()};
    Py_INCREF(c->owner);
    PyObject* cap = PyCapsule_New(c, kFastPushName, &fast_push_free);
    if (!cap) {
        Py_DECREF(c->owner);
        delete c;
        throw py::error_already_set();
    }
    PyObject* fn = PyCFunction_NewEx(&kFastPushDef, cap, nullptr);
    Py_DECREF(cap);
    if (!fn) throw py::error_already_set();
    return py::reinterpret_steal<py::object>(fn);
}

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
    if (!link_detector::g_link_list) {
        PyObject* t = PyType_FromSpec(&link_detector::kLinkListSpec);
        if (!t) throw py::error_already_set();
        link_detector::g_link_list = reinterpret_cast<PyTypeObject*>(t);
        auto* e = PyObject_NewVar(link_detector::LinkListObject, link_detector::g_link_list, 0);
        if (!e) throw py::error_already_set();
        e->owner = nullptr;
        e->base = nullptr;
        e->n = 0;
        e->recs = nullptr;
        e->ids = nullptr;
        e->bytes = nullptr;
        link_detector::g_empty_links = reinterpret_cast<PyObject*>(e);
        m.add_object("LinkList", py::reinterpret_borrow<py::object>(t));
    }
    py::class_<LinkDetectorCore>(m, "LinkDetectorCore")
        .def(py::init<Bytes, i64, i64, i64, i64, bool, py::object, py::object, py::object>(), py::arg("token_bytes"),
             py::arg("max_text_bytes"), py::arg("max_target_bytes"), py::arg("max_openers"), py::arg("max_depth"),
             py::arg("skip_code"), py::arg("link_type"), py::arg("as_ids"), py::arg("as_token_id"))
        .def("reset", &LinkDetectorCore::reset)
        .def("push_many", &LinkDetectorCore::push_many, "push_many(ids) -> list[DetectedLink]")
        .def("push_many_arrays", &LinkDetectorCore::push_many_arrays, "push_many_arrays(ids) -> LinkArrays fields")
        .def_static("fast_push_many", &link_detector::fast_push_many, "a push_many builtin bound to the core")
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
