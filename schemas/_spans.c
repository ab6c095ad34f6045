/* Where things are inside a JSON text, without decoding it: byte spans of an object's member or an array's items.
 *
 * The flow and the gateway see the same `context` object again and again, byte for byte (a device sends the same
 * one with every event). Finding its bytes lets them look up what they already worked out for it (its validity,
 * its PII-free form, its JSON text) instead of decoding, checking and re-encoding it every time.
 *
 * This is a scanner, not a parser: it follows strings (with their escapes) and brackets, and checks the grammar
 * only as far as it needs to find its way. The callers always hand what is left of the text to a real JSON parser,
 * and parse a span they have not seen before on its own, so nothing malformed gets through; this module only has to
 * be right about where things are in a text that is valid JSON, and to refuse (ValueError) wherever it cannot be
 * sure what a parser would make of the text:
 *
 * - a key written with an escape (`"cont\u0065xt"` is the key "context" to a parser, not to a byte comparison);
 * - the wanted key more than once (parsers keep the last one; refusing is simpler than agreeing);
 * - anything that is not an object (or array) where one is expected, or text after it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define FAIL (-1)

static inline int
is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static inline Py_ssize_t
skip_space(const unsigned char *s, Py_ssize_t i, Py_ssize_t end)
{
    while (i < end && is_space(s[i])) {
        i++;
    }
    return i;
}

/* Which bytes end a run of plain string text: the quote and the backslash. */
static unsigned char string_stops[256];

/* s[i] is the opening quote: the index after the closing one. Where SSE2 is there (every x86-64), 16 bytes are
 * looked at a time for a quote or a backslash; the rest goes byte by byte through a table. (Most strings in events
 * are a few to a few dozen bytes, where calling memchr per string would cost more than it saves.) */
static Py_ssize_t
skip_string(const unsigned char *s, Py_ssize_t i, Py_ssize_t end)
{
#ifdef __SSE2__
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\');
#endif
    for (i++;;) {
#ifdef __SSE2__
        while (i + 16 <= end) {
            __m128i chunk = _mm_loadu_si128((const __m128i *)(s + i));
            int hits = _mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(chunk, quote), _mm_cmpeq_epi8(chunk, backslash)));
            if (hits) {
                i += __builtin_ctz((unsigned)hits);
                break;
            }
            i += 16;
        }
#endif
        while (i < end && !string_stops[s[i]]) {
            i++;
        }
        if (i >= end) {
            return FAIL;
        }
        if (s[i] == '"') {
            return i + 1;
        }
        i += 2; /* a backslash and the character it escapes, whatever it is (a \" must not end the string) */
    }
}

/* Which bytes a container scan stops at: quotes and brackets. */
static unsigned char stops[256];

static void
init_stops(void)
{
    stops['"'] = stops['{'] = stops['['] = stops['}'] = stops[']'] = 1;
    string_stops['"'] = string_stops['\\'] = 1;
}

/* The index after the value starting at s[i]. Containers are followed by bracket depth; the kind of bracket is not
 * matched (a parser rejects `[}` later), strings inside them are skipped whole. */
static Py_ssize_t
skip_value(const unsigned char *s, Py_ssize_t i, Py_ssize_t end)
{
    if (i >= end) {
        return FAIL;
    }
    unsigned char c = s[i];
    if (c == '"') {
        return skip_string(s, i, end);
    }
    if (c == '{' || c == '[') {
        Py_ssize_t depth = 0;
        while (i < end) {
            c = s[i];
            if (!stops[c]) {
                i++;
                continue;
            }
            if (c == '"') {
                i = skip_string(s, i, end);
                if (i == FAIL) {
                    return FAIL;
                }
                continue;
            }
            if (c == '{' || c == '[') {
                depth++;
            }
            else if (--depth == 0) {
                return i + 1;
            }
            i++;
        }
        return FAIL;
    }
    /* a number, true, false or null: up to the next delimiter */
    Py_ssize_t start = i;
    while (i < end) {
        c = s[i];
        if (c == ',' || c == '}' || c == ']' || c == ':' || c == '"' || c == '{' || c == '[' || is_space(c)) {
            break;
        }
        i++;
    }
    return i > start ? i : FAIL;
}

static const char *refusal; /* why the last scan failed (the GIL is held throughout: one scan at a time) */

#define MAX_LEVELS 8 /* path_spans reports the objects along a path this long at most */

/* What a scan looks for: the value at `path` in an object and, when `member` is set, that value being an array,
 * each of its items with the span of `member` (a path) in those that are objects. */
typedef struct {
    PyObject *path;
    PyObject *member;   /* NULL: only the value's span */
    PyObject *items;    /* the items' spans, when `member` is set */
    Py_ssize_t start, end;
    Py_ssize_t outer[MAX_LEVELS][2];  /* spans of the objects the path leads through (its first MAX_LEVELS) */
} target_t;

enum { MORE, CLOSED, NEITHER };

/* After a member or an item ending at `value_end`: MORE with *i at the next one (past a comma), CLOSED with *i past
 * the container's `close`, or NEITHER. */
static int
separator(const unsigned char *s, Py_ssize_t *i, Py_ssize_t value_end, Py_ssize_t end, unsigned char close)
{
    Py_ssize_t at = skip_space(s, value_end, end);
    if (at < end && s[at] == ',') {
        *i = skip_space(s, at + 1, end);
        return MORE;
    }
    if (at < end && s[at] == close) {
        *i = at + 1;
        return CLOSED;
    }
    return NEITHER;
}

static Py_ssize_t scan_object(const unsigned char *s, Py_ssize_t i, Py_ssize_t end, PyObject *path, Py_ssize_t level,
                              target_t *t);

static PyObject *
span_tuple(Py_ssize_t start, Py_ssize_t end)
{
    PyObject *pair = PyTuple_New(2), *a = PyLong_FromSsize_t(start), *b = PyLong_FromSsize_t(end);
    if (pair == NULL || a == NULL || b == NULL) {
        Py_XDECREF(pair);
        Py_XDECREF(a);
        Py_XDECREF(b);
        return NULL;
    }
    PyTuple_SET_ITEM(pair, 0, a);
    PyTuple_SET_ITEM(pair, 1, b);
    return pair;
}

static int
append_item(PyObject *items, Py_ssize_t a, Py_ssize_t b, Py_ssize_t c, Py_ssize_t d)
{
    PyObject *span = PyTuple_New(4);
    if (span == NULL) {
        return -1;
    }
    Py_ssize_t values[4] = {a, b, c, d};
    for (int k = 0; k < 4; k++) {
        PyObject *number = PyLong_FromSsize_t(values[k]);
        if (number == NULL) {
            Py_DECREF(span);
            return -1;
        }
        PyTuple_SET_ITEM(span, k, number);
    }
    int failed = PyList_Append(items, span);
    Py_DECREF(span);
    return failed;
}

/* The array starting at s[i]: the index after it, each item appended to t->items with the span of t->member in it
 * (-1, -1 where it is not an object or has no such member). FAIL with `refusal` set, or with a Python error set. */
static Py_ssize_t
scan_items(const unsigned char *s, Py_ssize_t i, Py_ssize_t end, target_t *t)
{
    if (i >= end || s[i] != '[') {
        refusal = "the value at the array path is not an array";
        return FAIL;
    }
    i = skip_space(s, i + 1, end);
    if (i < end && s[i] == ']') {
        return i + 1;
    }
    for (;;) {
        Py_ssize_t value_end;
        target_t inner = {t->member, NULL, NULL, FAIL, FAIL, {{0}}};
        if (i < end && s[i] == '{') {
            value_end = scan_object(s, i, end, t->member, 0, &inner);
        }
        else {
            value_end = skip_value(s, i, end);
            if (value_end == FAIL) {
                refusal = "malformed array item";
            }
        }
        if (value_end == FAIL) {
            return FAIL;
        }
        if (append_item(t->items, i, value_end, inner.start, inner.end) < 0) {
            return FAIL;
        }
        switch (separator(s, &i, value_end, end, ']')) {
        case MORE:
            continue;
        case CLOSED:
            return i;
        default:
            refusal = "expected ',' or ']' after an array item";
            return FAIL;
        }
    }
}

/* The object starting at s[i] (after any space): the index after it, FAIL (with `refusal` set) when it cannot be
 * read for sure. The value of member path[level] is read as an object in turn while the path goes on; the last one
 * is the target (its span, and its items when the target asks for them). */
static Py_ssize_t
scan_object(const unsigned char *s, Py_ssize_t i, Py_ssize_t end, PyObject *path, Py_ssize_t level, target_t *t)
{
    PyObject *key_object = PyTuple_GET_ITEM(path, level);
    const char *key = PyBytes_AS_STRING(key_object);
    Py_ssize_t key_len = PyBytes_GET_SIZE(key_object);
    int last = level == PyTuple_GET_SIZE(path) - 1, seen = 0;

    i = skip_space(s, i, end);
    if (i >= end || s[i] != '{') {
        refusal = "not a JSON object";
        return FAIL;
    }
    i = skip_space(s, i + 1, end);
    if (i < end && s[i] == '}') {
        return i + 1;
    }
    for (;;) {
        if (i >= end || s[i] != '"') {
            refusal = "expected a member name";
            return FAIL;
        }
        Py_ssize_t name = i + 1, after = skip_string(s, i, end);
        if (after == FAIL) {
            refusal = "unterminated member name";
            return FAIL;
        }
        if (memchr(s + name, '\\', (size_t)(after - 1 - name)) != NULL) {
            refusal = "a member name is written with an escape";
            return FAIL;
        }
        int wanted = (after - 1 - name == key_len) && memcmp(s + name, key, (size_t)key_len) == 0;
        i = skip_space(s, after, end);
        if (i >= end || s[i] != ':') {
            refusal = "expected ':' after a member name";
            return FAIL;
        }
        i = skip_space(s, i + 1, end);
        Py_ssize_t value_end;
        if (!wanted) {
            value_end = skip_value(s, i, end);
        }
        else if (seen++) {
            refusal = "a member of the path occurs more than once";
            return FAIL;
        }
        else if (!last) {
            value_end = scan_object(s, i, end, path, level + 1, t);
            if (value_end == FAIL) {
                return FAIL;
            }
            if (level < MAX_LEVELS) {
                t->outer[level][0] = i;
                t->outer[level][1] = value_end;
            }
        }
        else if (t->member != NULL) {
            value_end = scan_items(s, i, end, t);
            if (value_end == FAIL) {
                return FAIL;
            }
            t->start = i;
            t->end = value_end;
        }
        else {
            value_end = skip_value(s, i, end);
            t->start = i;
            t->end = value_end;
        }
        if (value_end == FAIL) {
            refusal = "malformed member value";
            return FAIL;
        }
        switch (separator(s, &i, value_end, end, '}')) {
        case MORE:
            continue;
        case CLOSED:
            return i;
        default:
            refusal = "expected ',' or '}' after a member";
            return FAIL;
        }
    }
}

static int
valid_path(PyObject *path)
{
    if (!PyTuple_Check(path) || PyTuple_GET_SIZE(path) == 0) {
        return 0;
    }
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(path); k++) {
        if (!PyBytes_Check(PyTuple_GET_ITEM(path, k))) {
            return 0;
        }
    }
    return 1;
}

/* Runs the scan of `t` over the object data[start:end]: 0, or -1 with an exception set (ValueError: a refusal). */
static int
scan(PyObject *data, Py_ssize_t start, Py_ssize_t end, target_t *t)
{
    const unsigned char *s = (const unsigned char *)PyBytes_AS_STRING(data);
    refusal = NULL;
    Py_ssize_t i = scan_object(s, start, end, t->path, 0, t);
    if (i == FAIL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, refusal != NULL ? refusal : "cannot be read");
        }
        return -1;
    }
    if (skip_space(s, i, end) != end) {
        PyErr_SetString(PyExc_ValueError, "text after the object");
        return -1;
    }
    return 0;
}

/* member_span and path_spans: the target's span, and with `levels` set the spans of every object on the way. */
static PyObject *
find_span(PyObject *const *args, Py_ssize_t nargs, int levels)
{
    if (nargs < 2 || nargs > 4) {
        PyErr_SetString(PyExc_TypeError, levels ? "path_spans(data, path, start=0, end=len(data))"
                                                : "member_span(data, path, start=0, end=len(data))");
        return NULL;
    }
    if (!PyBytes_Check(args[0]) || !valid_path(args[1])) {
        PyErr_SetString(PyExc_TypeError, "data must be bytes and path a non-empty tuple of bytes");
        return NULL;
    }
    Py_ssize_t depth = PyTuple_GET_SIZE(args[1]);
    if (levels && depth > MAX_LEVELS) {
        PyErr_SetString(PyExc_ValueError, "path_spans: a path of at most 8 members");
        return NULL;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]), start = 0, end = size;
    if (nargs > 2 && (start = PyLong_AsSsize_t(args[2])) == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (nargs > 3 && (end = PyLong_AsSsize_t(args[3])) == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (start < 0 || end > size || start > end) {
        PyErr_SetString(PyExc_IndexError, "span out of range");
        return NULL;
    }
    target_t t = {args[1], NULL, NULL, FAIL, FAIL, {{0}}};
    if (scan(args[0], start, end, &t) < 0) {
        return NULL;
    }
    if (t.start == FAIL) {
        Py_RETURN_NONE;
    }
    if (!levels) {
        return span_tuple(t.start, t.end);
    }
    PyObject *spans = PyTuple_New(depth);
    if (spans == NULL) {
        return NULL;
    }
    for (Py_ssize_t k = 0; k < depth; k++) {
        PyObject *pair = k < depth - 1 ? span_tuple(t.outer[k][0], t.outer[k][1]) : span_tuple(t.start, t.end);
        if (pair == NULL) {
            Py_DECREF(spans);
            return NULL;
        }
        PyTuple_SET_ITEM(spans, k, pair);
    }
    return spans;
}

static PyObject *
member_span(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    return find_span(args, nargs, 0);
}

static PyObject *
path_spans(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    return find_span(args, nargs, 1);
}

static PyObject *
item_members(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "item_members(data, array_path, member_path)");
        return NULL;
    }
    if (!PyBytes_Check(args[0]) || !valid_path(args[1]) || !valid_path(args[2])) {
        PyErr_SetString(PyExc_TypeError, "data must be bytes and the paths non-empty tuples of bytes");
        return NULL;
    }
    target_t t = {args[1], args[2], PyList_New(0), FAIL, FAIL, {{0}}};
    if (t.items == NULL) {
        return NULL;
    }
    if (scan(args[0], 0, PyBytes_GET_SIZE(args[0]), &t) < 0) {
        Py_DECREF(t.items);
        return NULL;
    }
    if (t.start == FAIL) {
        Py_DECREF(t.items);
        Py_RETURN_NONE;
    }
    return t.items;
}

static PyMethodDef methods[] = {
    {"member_span", (PyCFunction)(void (*)(void))member_span, METH_FASTCALL,
     "member_span(data, path, start=0, end=len(data)) -> (start, end) | None\n\n"
     "The span of the value at `path` (a tuple of member names as bytes, compared as written: (b\"event\",\n"
     "b\"context\") is data's event.context) in the JSON object that data[start:end] holds; None when there is\n"
     "no such member. ValueError when that cannot be told for sure: not an object where the path leads through\n"
     "one, a member name written with an escape, a member of the path more than once, or text after the object."},
    {"path_spans", (PyCFunction)(void (*)(void))path_spans, METH_FASTCALL,
     "path_spans(data, path, start=0, end=len(data)) -> ((start, end), ...) | None\n\n"
     "member_span, with the spans of every value along the path: one pair per member of `path` (at most 8), the\n"
     "objects it leads through first and the target last; None when the target is not there. Same refusals."},
    {"item_members", (PyCFunction)(void (*)(void))item_members, METH_FASTCALL,
     "item_members(data, array_path, member_path) -> [(start, end, member_start, member_end), ...] | None\n\n"
     "The items of the array at `array_path` in the JSON object `data` (None when there is no such member), each\n"
     "with the span of the value at `member_path` in it, (-1, -1) where the item is not an object or has none.\n"
     "One pass over the text. ValueError as member_span raises it, for either path, and when the value at\n"
     "array_path is not an array."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "schemas._spans", "Byte spans of members and items in a JSON text, in C.", -1, methods,
};

PyMODINIT_FUNC
PyInit__spans(void)
{
    init_stops();
    return PyModule_Create(&module);
}
