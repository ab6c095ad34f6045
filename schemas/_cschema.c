/* The registry's "surely valid?" checks (schemas/compiler.py), evaluated in C.
 *
 * schemas.compiler.check_spec describes, as nested tuples, the very check compile_check generates as Python source;
 * a Checker walks that description against a decoded JSON value. The answer is the generated function's answer:
 * True only for a value surely valid, False for everything else, including any exception raised on the way (a
 * pattern or format function that fails): the caller then asks fastjsonschema. Exact types throughout, as in the
 * generated code (a str subclass, a tuple, a bool where an integer belongs do not pass).
 *
 * The layout of the description is documented next to check_spec; this file reads it by position and trusts it
 * (it is built by check_spec only), except that it never reads past a tuple's end.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <math.h>

enum { K_OBJECT, K_ARRAY, K_STRING, K_INTEGER, K_NUMBER, K_BOOLEAN, K_NULL };

static int check_node(PyObject *node, PyObject *value);

/* 1: passes, 0: fails. Errors count as failures (cleared). */
static int
fail_on_error(void)
{
    if (PyErr_Occurred()) {
        PyErr_Clear();
    }
    return 0;
}

static int
is_kind(int kind, PyObject *v)
{
    switch (kind) {
    case K_OBJECT: return PyDict_CheckExact(v);
    case K_ARRAY: return PyList_CheckExact(v);
    case K_STRING: return PyUnicode_CheckExact(v);
    case K_INTEGER: return PyLong_CheckExact(v);
    case K_NUMBER: return PyLong_CheckExact(v) || PyFloat_CheckExact(v);
    case K_BOOLEAN: return PyBool_Check(v);
    case K_NULL: return v == Py_None;
    default: return 0;
    }
}

static int
is_json_type(PyObject *v)
{
    return PyDict_CheckExact(v) || PyList_CheckExact(v) || PyUnicode_CheckExact(v) || PyLong_CheckExact(v)
           || PyFloat_CheckExact(v) || PyBool_Check(v) || v == Py_None;
}

static Py_ssize_t
size_at(PyObject *t, Py_ssize_t i)
{
    return PyLong_AsSsize_t(PyTuple_GET_ITEM(t, i));
}

/* `callable(value)` is truthy (or, with none_fails, is not None); errors fail. */
static int
call_test(PyObject *callable, PyObject *value, int none_fails)
{
    PyObject *out = PyObject_CallOneArg(callable, value);
    if (out == NULL) {
        return fail_on_error();
    }
    int ok;
    if (none_fails) {
        ok = out != Py_None;
    }
    else {
        ok = PyObject_IsTrue(out);
        if (ok < 0) {
            ok = fail_on_error();
        }
    }
    Py_DECREF(out);
    return ok;
}

/* (enum, min, max, pattern, pattern_is_regex, format) */
static int
check_string(PyObject *b, PyObject *v)
{
    PyObject *choices = PyTuple_GET_ITEM(b, 0);
    if (choices != Py_None) {
        int in = PySet_Contains(choices, v);
        if (in <= 0) {
            return in < 0 ? fail_on_error() : 0;
        }
    }
    Py_ssize_t low = size_at(b, 1), high = size_at(b, 2), length = PyUnicode_GET_LENGTH(v);
    if ((low >= 0 && length < low) || (high >= 0 && length > high)) {
        return 0;
    }
    PyObject *pattern = PyTuple_GET_ITEM(b, 3);
    if (pattern != Py_None && !call_test(pattern, v, PyTuple_GET_ITEM(b, 4) == Py_True)) {
        return 0;
    }
    PyObject *format = PyTuple_GET_ITEM(b, 5);
    if (format != Py_None && !call_test(format, v, 0)) {
        return 0;
    }
    return 1;
}

/* (finite, ((op, bound), ...)): fails when `value op bound` */
static int
check_number(PyObject *b, PyObject *v)
{
    if (PyTuple_GET_ITEM(b, 0) == Py_True && PyFloat_CheckExact(v) && !isfinite(PyFloat_AS_DOUBLE(v))) {
        return 0;
    }
    PyObject *bounds = PyTuple_GET_ITEM(b, 1);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(bounds); i++) {
        PyObject *pair = PyTuple_GET_ITEM(bounds, i);
        int op = (int)PyLong_AsLong(PyTuple_GET_ITEM(pair, 0));
        int refused = PyObject_RichCompareBool(v, PyTuple_GET_ITEM(pair, 1), op);
        if (refused != 0) {
            return refused < 0 ? fail_on_error() : 0;
        }
    }
    return 1;
}

/* (groups, closed, always_fails, must_have, props, present_required, max, min, names, rest, declared) */
static int
check_object(PyObject *b, PyObject *v)
{
    if (PyTuple_GET_ITEM(b, 2) == Py_True) {
        return 0;
    }
    PyObject *groups = PyTuple_GET_ITEM(b, 0);
    if (groups != Py_None) {
        int any = 0;
        for (Py_ssize_t g = 0; g < PyTuple_GET_SIZE(groups) && !any; g++) {
            PyObject *group = PyTuple_GET_ITEM(groups, g);
            int all = 1;
            for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(group) && all; k++) {
                int in = PyDict_Contains(v, PyTuple_GET_ITEM(group, k));
                if (in < 0) {
                    return fail_on_error();
                }
                all = in;
            }
            any = all;
        }
        if (!any) {
            return 0;
        }
    }
    PyObject *must = PyTuple_GET_ITEM(b, 3);
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(must); k++) {
        int in = PyDict_Contains(v, PyTuple_GET_ITEM(must, k));
        if (in <= 0) {
            return in < 0 ? fail_on_error() : 0;
        }
    }
    int closed = PyTuple_GET_ITEM(b, 1) == Py_True;
    Py_ssize_t counted = size_at(b, 5);
    PyObject *props = PyTuple_GET_ITEM(b, 4);
    for (Py_ssize_t p = 0; p < PyTuple_GET_SIZE(props); p++) {
        PyObject *prop = PyTuple_GET_ITEM(props, p);
        PyObject *child = PyDict_GetItemWithError(v, PyTuple_GET_ITEM(prop, 0));
        if (child == NULL) {
            if (PyErr_Occurred()) {
                return fail_on_error();
            }
            if (PyTuple_GET_ITEM(prop, 2) == Py_True) {
                return 0; /* a required key is missing */
            }
            continue;
        }
        if (PyTuple_GET_ITEM(prop, 2) != Py_True) {
            counted++;
        }
        Py_INCREF(child);
        int ok = check_node(PyTuple_GET_ITEM(prop, 1), child);
        Py_DECREF(child);
        if (!ok) {
            return 0;
        }
    }
    Py_ssize_t size = PyDict_GET_SIZE(v), high = size_at(b, 6), low = size_at(b, 7);
    if ((closed && size != counted) || (high >= 0 && size > high) || (low >= 0 && size < low)) {
        return 0;
    }
    PyObject *names = PyTuple_GET_ITEM(b, 8), *rest = PyTuple_GET_ITEM(b, 9);
    if (names == Py_True && rest == Py_True) {
        return 1;
    }
    PyObject *declared = PyTuple_GET_ITEM(b, 10);
    PyObject *items = PyDict_Items(v); /* a snapshot: checks call Python functions */
    if (items == NULL) {
        return fail_on_error();
    }
    int ok = 1;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items) && ok; i++) {
        PyObject *pair = PyList_GET_ITEM(items, i);
        PyObject *key = PyTuple_GET_ITEM(pair, 0), *value = PyTuple_GET_ITEM(pair, 1);
        if (names != Py_True && !check_node(names, key)) {
            ok = 0;
            break;
        }
        if (rest != Py_True) {
            int known = declared != Py_None ? PySet_Contains(declared, key) : 0;
            if (known < 0) {
                ok = fail_on_error();
                break;
            }
            if (!known && !check_node(rest, value)) {
                ok = 0;
            }
        }
    }
    Py_DECREF(items);
    return ok;
}

/* (min, max, items node, unique strings) */
static int
check_array(PyObject *b, PyObject *v)
{
    Py_ssize_t size = PyList_GET_SIZE(v), low = size_at(b, 0), high = size_at(b, 1);
    if ((low >= 0 && size < low) || (high >= 0 && size > high)) {
        return 0;
    }
    PyObject *items = PyTuple_GET_ITEM(b, 2);
    if (items != Py_None) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(v); i++) {
            PyObject *item = PyList_GET_ITEM(v, i);
            Py_INCREF(item);
            int ok = check_node(items, item);
            Py_DECREF(item);
            if (!ok) {
                return 0;
            }
        }
    }
    if (PyTuple_GET_ITEM(b, 3) == Py_True) {
        PyObject *distinct = PySet_New(v);
        if (distinct == NULL) {
            return fail_on_error();
        }
        int same = PySet_GET_SIZE(distinct) == PyList_GET_SIZE(v);
        Py_DECREF(distinct);
        return same;
    }
    return 1;
}

static int
check_body(int kind, PyObject *body, PyObject *v)
{
    if (!PyTuple_Check(body) || PyTuple_GET_SIZE(body) == 0) {
        return 1;
    }
    switch (kind) {
    case K_STRING: return check_string(body, v);
    case K_INTEGER:
    case K_NUMBER: return check_number(body, v);
    case K_OBJECT: return check_object(body, v);
    case K_ARRAY: return check_array(body, v);
    default: return 1;
    }
}

static int
check_node(PyObject *node, PyObject *v)
{
    if (node == Py_None) {
        return 1;
    }
    if (node == Py_False) {
        return 0;
    }
    PyObject *parts = PyTuple_GET_ITEM(node, 0), *chain = PyTuple_GET_ITEM(node, 1);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(parts); i++) {
        if (!check_node(PyTuple_GET_ITEM(parts, i), v)) {
            return 0;
        }
    }
    if (chain == Py_None) {
        return 1;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(chain); i++) {
        PyObject *link = PyTuple_GET_ITEM(chain, i);
        int kind = (int)PyLong_AsLong(PyTuple_GET_ITEM(link, 0));
        if (is_kind(kind, v)) {
            return check_body(kind, PyTuple_GET_ITEM(link, 1), v);
        }
    }
    return PyTuple_GET_ITEM(node, 2) == Py_True && is_json_type(v);
}

/* --- the Checker type: Checker(spec)(value) -> bool ------------------------------------------------------------ */
typedef struct {
    PyObject_HEAD
    PyObject *spec;
    vectorcallfunc vectorcall;
} Checker;

static PyObject *
checker_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "a check takes exactly one value");
        return NULL;
    }
    if (check_node(((Checker *)self)->spec, args[0])) {
        Py_RETURN_TRUE;
    }
    Py_RETURN_FALSE;
}

static PyObject *
checker_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *spec;
    if (!PyArg_ParseTuple(args, "O:Checker", &spec)) {
        return NULL;
    }
    if (spec != Py_None && spec != Py_False && !(PyTuple_Check(spec) && PyTuple_GET_SIZE(spec) == 3)) {
        PyErr_SetString(PyExc_TypeError, "Checker(spec): spec as schemas.compiler.check_spec describes it");
        return NULL;
    }
    Checker *self = (Checker *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    Py_INCREF(spec);
    self->spec = spec;
    self->vectorcall = checker_vectorcall;
    return (PyObject *)self;
}

static int
checker_traverse(Checker *self, visitproc visit, void *arg)
{
    Py_VISIT(self->spec);
    return 0;
}

static int
checker_clear(Checker *self)
{
    Py_CLEAR(self->spec);
    return 0;
}

static void
checker_dealloc(Checker *self)
{
    PyObject_GC_UnTrack(self);
    checker_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef checker_members[] = {
    {"spec", T_OBJECT, offsetof(Checker, spec), READONLY, "the description this checker evaluates"},
    {NULL},
};

static PyTypeObject CheckerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "schemas._cschema.Checker",
    .tp_basicsize = sizeof(Checker),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Checker(spec)(value) -> bool: the check schemas.compiler.compile_check generates, in C.",
    .tp_new = checker_new,
    .tp_dealloc = (destructor)checker_dealloc,
    .tp_traverse = (traverseproc)checker_traverse,
    .tp_clear = (inquiry)checker_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Checker, vectorcall),
    .tp_members = checker_members,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "schemas._cschema", "The registry's generated schema checks, evaluated in C.", -1, NULL,
};

PyMODINIT_FUNC
PyInit__cschema(void)
{
    if (PyType_Ready(&CheckerType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&CheckerType);
    if (PyModule_AddObject(m, "Checker", (PyObject *)&CheckerType) < 0) {
        Py_DECREF(&CheckerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
