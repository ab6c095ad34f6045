/* The hot format checks of schemas.formats, written out in C.
 *
 * Each function answers exactly what its regular-expression twin in schemas/formats.py answers, for every
 * str (tests/unit/schemas/test_cformats.py compares the two on generated and hand-picked strings). They exist
 * because every event carries a timestamp, an event id and usually a URL or two: in Python each check is a
 * function call plus a regex match, a few thousand instructions; here it is a loop over the characters.
 *
 * Characters are read through the str's own storage (1, 2 or 4 bytes each), so non-ASCII text is handled
 * like the regexes handle it: never a digit or letter of the ASCII classes, and whitespace exactly where
 * str.isspace() says so (what \s means in a str pattern).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

typedef struct {
    int kind;
    const void *data;
    Py_ssize_t len;
} text_t;

static int
read_text(PyObject *arg, text_t *t)
{
    if (!PyUnicode_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "expected str, got %.100s", Py_TYPE(arg)->tp_name);
        return -1;
    }
    if (PyUnicode_READY(arg) < 0) {
        return -1;
    }
    t->kind = PyUnicode_KIND(arg);
    t->data = PyUnicode_DATA(arg);
    t->len = PyUnicode_GET_LENGTH(arg);
    return 0;
}

#define AT(t, i) PyUnicode_READ((t)->kind, (t)->data, (i))

static inline int is_digit(Py_UCS4 c) { return c >= '0' && c <= '9'; }
static inline int is_alpha(Py_UCS4 c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
static inline int is_hex(Py_UCS4 c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

/* Two ASCII digits at i, as a number; -1 when either is not a digit. */
static int
two_digits(const text_t *t, Py_ssize_t i)
{
    Py_UCS4 a = AT(t, i), b = AT(t, i + 1);
    if (!is_digit(a) || !is_digit(b)) {
        return -1;
    }
    return (int)(a - '0') * 10 + (int)(b - '0');
}

/* Two ASCII digits at i, as a number, when it lies within [low, high]; else -1. */
static int
two_digits_within(const text_t *t, Py_ssize_t i, int low, int high)
{
    int value = two_digits(t, i);
    return value >= low && value <= high ? value : -1;
}

static int
days_in_month(int year, int month)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (month == 2 && year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)) {
        return 29;
    }
    return days[month - 1];
}

/* RFC 3339 date-time with an offset:
 *   YYYY-MM-DD[Tt]hh:mm:ss(.d+)?([Zz]|[+-]hh:mm), month 01-12, day 01-31, hour 00-23, minute and second
 *   00-59, offset hours 00-23; a day past the 28th must exist in that month (year 1-9999, as datetime.date). */
static int
date_time(const text_t *t)
{
    Py_ssize_t n = t->len, i;
    int year, month, day;
    if (n < 20) {
        return 0;
    }
    if ((year = two_digits(t, 0)) < 0 || (i = two_digits(t, 2)) < 0 || AT(t, 4) != '-') {
        return 0;
    }
    year = year * 100 + (int)i;
    month = two_digits_within(t, 5, 1, 12);
    day = two_digits_within(t, 8, 1, 31);
    if (month < 0 || AT(t, 7) != '-' || day < 0 || (AT(t, 10) != 'T' && AT(t, 10) != 't')) {
        return 0;
    }
    if (two_digits_within(t, 11, 0, 23) < 0 || AT(t, 13) != ':' || two_digits_within(t, 14, 0, 59) < 0
            || AT(t, 16) != ':' || two_digits_within(t, 17, 0, 59) < 0) {
        return 0;
    }
    i = 19;
    if (AT(t, i) == '.') {
        Py_ssize_t start = ++i;
        while (i < n && is_digit(AT(t, i))) {
            i++;
        }
        if (i == start) {
            return 0;
        }
    }
    if (i >= n) {
        return 0;
    }
    Py_UCS4 c = AT(t, i);
    if (c == 'Z' || c == 'z') {
        if (i + 1 != n) {
            return 0;
        }
    }
    else if (c == '+' || c == '-') {
        if (i + 6 != n || two_digits_within(t, i + 1, 0, 23) < 0 || AT(t, i + 3) != ':'
                || two_digits_within(t, i + 4, 0, 59) < 0) {
            return 0;
        }
    }
    else {
        return 0;
    }
    if (day > 28 && (year < 1 || day > days_in_month(year, month))) {
        return 0;
    }
    return 1;
}

/* [A-Za-z][A-Za-z0-9+.-]*:[^\s]+ over the whole string. */
static int
uri(const text_t *t)
{
    Py_ssize_t n = t->len, i = 1;
    if (n < 3 || !is_alpha(AT(t, 0))) {
        return 0;
    }
    for (; i < n; i++) {
        Py_UCS4 c = AT(t, i);
        if (!(is_alpha(c) || is_digit(c) || c == '+' || c == '.' || c == '-')) {
            break;
        }
    }
    if (i >= n || AT(t, i) != ':' || i + 1 >= n) {
        return 0;
    }
    for (i++; i < n; i++) {
        if (Py_UNICODE_ISSPACE(AT(t, i))) {
            return 0;
        }
    }
    return 1;
}

/* At most 320 characters, and [^@\s]+@[^@\s.]+(\.[^@\s.]+)+ over the whole string. */
static int
email(const text_t *t)
{
    Py_ssize_t n = t->len, i = 0, labels = 0, label = 0;
    if (n > 320) {
        return 0;
    }
    for (; i < n; i++) {
        Py_UCS4 c = AT(t, i);
        if (c == '@') {
            break;
        }
        if (Py_UNICODE_ISSPACE(c)) {
            return 0;
        }
    }
    if (i == 0 || i >= n) {
        return 0;
    }
    for (i++; i < n; i++) {
        Py_UCS4 c = AT(t, i);
        if (c == '@' || Py_UNICODE_ISSPACE(c)) {
            return 0;
        }
        if (c == '.') {
            if (label == 0) {
                return 0;
            }
            labels++;
            label = 0;
        }
        else {
            label++;
        }
    }
    return labels >= 1 && label > 0;
}

/* [0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12} over the whole string. */
static int
uuid(const text_t *t)
{
    if (t->len != 36) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < 36; i++) {
        Py_UCS4 c = AT(t, i);
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-') {
                return 0;
            }
        }
        else if (!is_hex(c)) {
            return 0;
        }
    }
    return 1;
}

#define CHECK_FUNCTION(name, test)                          \
    static PyObject *                                       \
    name##_py(PyObject *module, PyObject *arg)              \
    {                                                       \
        text_t t;                                           \
        if (read_text(arg, &t) < 0) {                       \
            return NULL;                                    \
        }                                                   \
        return PyBool_FromLong(test(&t));                   \
    }

CHECK_FUNCTION(is_date_time, date_time)
CHECK_FUNCTION(is_uri, uri)
CHECK_FUNCTION(is_email, email)
CHECK_FUNCTION(is_uuid, uuid)

static PyMethodDef methods[] = {
    {"is_date_time", is_date_time_py, METH_O, "RFC 3339 date-time with an offset and a real calendar day."},
    {"is_uri", is_uri_py, METH_O, "An absolute URI: a scheme, a colon, and no whitespace."},
    {"is_email", is_email_py, METH_O, "Looks like local@domain.tld (at most 320 characters)."},
    {"is_uuid", is_uuid_py, METH_O, "A hyphenated UUID, any version, either case."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "schemas._cformats", "Hot format checks of schemas.formats, in C.", -1, methods,
};

PyMODINIT_FUNC
PyInit__cformats(void)
{
    return PyModule_Create(&module);
}
