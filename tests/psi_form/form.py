#!/usr/bin/env python3
"""Independent implementation of canonical(v) (PROTOCOL.md §11.3) and form(v) (§11.6),
written from the revised text of those two sections only (the identifier rules are now
part of §11.3 step 3).  Standard library only.  Where the revised text still leaves room,
the choice is listed in ambiguities.md next to this file; [Rn] tags below refer to it.

Unicode: step 5 pins the case mappings of Unicode 17.0.  This uses the running Python's
str.lower() (Python 3.11: Unicode 14.0) and does not emulate 17.0; see ambiguities.md,
"Unicode version of this runtime", for the corpus lines that can differ.

Usage: form.py FILE [--canonical]
  FILE holds one JSON-encoded string per line; prints one JSON-encoded form(v) per line
  (or canonical(v) with --canonical).
"""
import json
import re
import sys

# ---------------------------------------------------------------------------
# "White space" is Unicode White_Space throughout (§11.3 lists the code points).  Deliberately
# NOT Python's str.isspace()/str.strip(), which also treat U+001C..U+001F as space.
WHITE_SPACE = frozenset(
    [chr(c) for c in range(0x09, 0x0E)]        # TAB LF VT FF CR
    + ["\u0020", "\u0085", "\u00A0", "\u1680"]
    + [chr(c) for c in range(0x2000, 0x200B)]  # EN QUAD .. HAIR SPACE
    + ["\u2028", "\u2029", "\u202F", "\u205F", "\u3000"]
)


def is_ws(ch):
    return ch in WHITE_SPACE


# ---------------------------------------------------------------------------
# Steps 1-2

def half_width(v):
    """Step 1: U+FF01..U+FF5E -> U+0021..U+007E, U+3000 -> U+0020, nothing else."""
    out = []
    for ch in v:
        o = ord(ch)
        if 0xFF01 <= o <= 0xFF5E:
            out.append(chr(o - 0xFEE0))
        elif o == 0x3000:
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


def trim(v):
    """Step 2: strip leading and trailing Unicode White_Space."""
    i, j = 0, len(v)
    while i < j and is_ws(v[i]):
        i += 1
    while j > i and is_ws(v[j - 1]):
        j -= 1
    return v[i:j]


def half_trim(v):
    return trim(half_width(v))


# ---------------------------------------------------------------------------
# Calendar helpers (proleptic Gregorian, year 0000 included; own arithmetic so that the
# UTC+8 shift can be computed at the edges of 0000..9999)

def is_leap(y):
    return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)


def days_in_month(y, m):
    if m == 2:
        return 29 if is_leap(y) else 28
    return 31 if m in (1, 3, 5, 7, 8, 10, 12) else 30


def real_date(y, m, d):
    return 1 <= m <= 12 and 1 <= d <= days_in_month(y, m)


def days_from_civil(y, m, d):
    """Days since 1970-01-01 (H. Hinnant's algorithm), valid for any integer year."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    mp = (m + 9) % 12
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def civil_from_days(z):
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return (y + (m <= 2), m, d)


def fmt_date(y, m, d):
    assert 0 <= y <= 9999          # layout 1 does not apply outside 0000..9999
    return "%04d-%02d-%02d" % (y, m, d)


# ---------------------------------------------------------------------------
# Identifiers (§11.3 step 3)

ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
ID_CHECK = "10X98765432"
ASCII_DIGITS = "0123456789"


def id_check_char(first17):
    s = sum(int(c) * w for c, w in zip(first17, ID_WEIGHTS)) % 11
    return ID_CHECK[s]


def valid_id18(s):
    if len(s) != 18:
        return False
    if not all(c in ASCII_DIGITS for c in s[:17]):
        return False
    if s[17] not in ASCII_DIGITS and s[17] != "X":
        return False
    if id_check_char(s[:17]) != s[17]:
        return False
    # characters 7-14: a real date from 1800-01-01 on, no upper bound, region not checked
    y, m, d = int(s[6:10]), int(s[10:12]), int(s[12:14])
    return y >= 1800 and real_date(y, m, d)


def valid_id15(s):
    """15 digits whose characters 7-12, read as 19YYMMDD, are a real date."""
    if len(s) != 15 or not all(c in ASCII_DIGITS for c in s):
        return False
    y, m, d = 1900 + int(s[6:8]), int(s[8:10]), int(s[10:12])
    return real_date(y, m, d)


def id15_to_18(s):
    first17 = s[:6] + "19" + s[6:]
    return first17 + id_check_char(first17)


USCC_CHARSET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
USCC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)


def valid_uscc(s):
    if len(s) != 18 or not all(c in USCC_CHARSET for c in s):
        return False
    total = sum(USCC_CHARSET.index(c) * w for c, w in zip(s[:17], USCC_WEIGHTS))
    c = (31 - total % 31) % 31
    return USCC_CHARSET[c] == s[17]


# 28 characters: 12 digits, 2 letters A-Z, 5 digits, one of F L Q W, 8 digits
PROPERTY_RE = re.compile(r"[0-9]{12}[A-Z]{2}[0-9]{5}[FLQW][0-9]{8}")


def valid_property_unit(s):
    return len(s) == 28 and PROPERTY_RE.fullmatch(s) is not None


def ascii_upper(s):
    return "".join(chr(ord(c) - 32) if "a" <= c <= "z" else c for c in s)


MOBILE_RE = re.compile(r"1[3-9][0-9]{9}")


# ---------------------------------------------------------------------------
# canonical(v), §11.3 steps 1-5

def canonical(v):
    t = half_trim(v)                                             # steps 1-2
    # step 3: all white space removed, ASCII letters upper-cased, nothing else removed
    s = ascii_upper("".join(ch for ch in t if not is_ws(ch)))
    if valid_id18(s):
        return s
    if valid_id15(s):
        return id15_to_18(s)
    if valid_uscc(s):
        return s
    if valid_property_unit(s):
        return s
    # step 4: white space and U+002D removed (from the step-2 result [R1])
    m = "".join(ch for ch in t if not is_ws(ch) and ch != "-")
    if m.startswith("+86"):
        m = m[3:]
    elif m.startswith("0086"):
        m = m[4:]
    elif len(m) == 13 and m.startswith("86"):
        m = m[2:]
    if MOBILE_RE.fullmatch(m):
        return m
    # step 5: collapse inner runs of white space to one U+0020, lower-case per character
    out = []
    in_ws = False
    for ch in t:
        if is_ws(ch):
            if not in_ws:
                out.append(" ")
            in_ws = True
        else:
            in_ws = False
            # str.lower() of a single character = the full lower-case mapping (SpecialCasing
            # unconditional entries included: U+0130 -> i + U+0307) without context (Python
            # applies Final_Sigma only within a longer string, never to one character).
            out.append(ch.lower())
    return "".join(out)


# ---------------------------------------------------------------------------
# form(v), §11.6

# Layout 1: YYYY-MM-DD, "T"/"t"/space [R2], hh:mm:ss, optional "." and 1+ digits (ignored),
# then "Z", "z", "+hh:mm" or "-hh:mm"; the whole of t [R5].  "Digits" are ASCII digits
# everywhere ([0-9], never \d) [R6].
RFC3339_RE = re.compile(
    r"(?P<y>[0-9]{4})-(?P<mo>[0-9]{2})-(?P<d>[0-9]{2})[Tt ]"
    r"(?P<h>[0-9]{2}):(?P<mi>[0-9]{2}):(?P<s>[0-9]{2})(?:\.[0-9]+)?"
    r"(?:[Zz]|(?P<osign>[+-])(?P<oh>[0-9]{2}):(?P<om>[0-9]{2}))"
)
# Layout 2: one separator used twice; alone, or followed by U+0020 or "T" and anything.
SEP_DATE_RE = re.compile(r"([0-9]{4})([-/.])([0-9]{2})\2([0-9]{2})(?:[ T].*)?", re.S)
# Layout 3: exactly 8 digits.
COMPACT_DATE_RE = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})")
# Layout 4: the whole of t, 4, 1-2 and 1-2 digits.
CJK_DATE_RE = re.compile(r"([0-9]{4})年([0-9]{1,2})月([0-9]{1,2})日")
DECIMAL_RE = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]*))?(?:[eE]([+-]?[0-9]+))?")

UTC8_MINUTES = 8 * 60

NOT_A_DATE = "not a date"      # a layout applied but its date is not real [R3]


def layout1(t):
    """RFC 3339: the date in UTC+8, None if the layout does not apply, or NOT_A_DATE."""
    m = RFC3339_RE.fullmatch(t)                # the whole of t [R5]
    if not m:
        return None
    h, mi, s = int(m["h"]), int(m["mi"]), int(m["s"])
    if h > 23 or mi > 59 or s > 59:            # no leap second
        return None
    off = 0
    if m["osign"]:
        oh, om = int(m["oh"]), int(m["om"])
        if oh > 23 or om > 59:
            return None
        off = oh * 60 + om
        if m["osign"] == "-":
            off = -off
    y, mo, d = int(m["y"]), int(m["mo"]), int(m["d"])
    if not real_date(y, mo, d):
        return NOT_A_DATE
    # seconds (00-59) and the ignored fraction never move the minute, so the date in
    # UTC+8 is determined by the minute count
    minutes = days_from_civil(y, mo, d) * 1440 + h * 60 + mi - off + UTC8_MINUTES
    r = civil_from_days(minutes // 1440)
    if not 0 <= r[0] <= 9999:
        return None                            # "else this layout does not apply"
    return r


def _ymd(m, iy, im, idd):
    y, mo, d = int(m[iy]), int(m[im]), int(m[idd])
    return (y, mo, d) if real_date(y, mo, d) else NOT_A_DATE


def layout2(t):
    m = SEP_DATE_RE.fullmatch(t)
    return _ymd(m, 1, 3, 4) if m else None


def layout3(t):
    m = COMPACT_DATE_RE.fullmatch(t)
    return _ymd(m, 1, 2, 3) if m else None


def layout4(t):
    m = CJK_DATE_RE.fullmatch(t)
    return _ymd(m, 1, 2, 3) if m else None


def read_date(t):
    """The layouts of §11.6, tried in order, the first that applies deciding."""
    for layout in (layout1, layout2, layout3, layout4):
        r = layout(t)
        if r is NOT_A_DATE:
            return None
        if r is not None:
            return r
    return None


def decimal_form(c):
    """N for a decimal number c, or None."""
    m = DECIMAL_RE.fullmatch(c)
    if not m:
        return None
    sign, ip, fp, ex = m[1], m[2] or "", m[3], m[4]
    fp = fp or ""
    if not ip and not fp:
        return None                       # at least one digit [R4]
    e = 0
    if ex is not None:
        e = int(ex)
        if abs(e) > 100000:               # its value as written, at most 100000 in magnitude
            return None
    digits = (ip + fp).lstrip("0")
    if not digits:
        return "0"
    e -= len(fp)
    stripped = digits.rstrip("0")
    e += len(digits) - len(stripped)
    return ("-" if sign == "-" else "") + stripped + "e" + str(e)


def form(v):
    t = half_trim(v)
    c = canonical(v)
    dt = read_date(t)
    if dt is not None:
        return "date:" + fmt_date(*dt)
    n = decimal_form(c)
    if n is not None:
        return "number:" + n
    return "text:" + c


# ---------------------------------------------------------------------------

def main(argv):
    if len(argv) < 2:
        sys.stderr.write("usage: form.py FILE [--canonical]\n")
        return 2
    fn = canonical if "--canonical" in argv[2:] else form
    with open(argv[1], "r", encoding="utf-8", newline="") as f:
        data = f.read()
    lines = data.split("\n")          # only LF: a line may hold U+2028/U+0085 raw
    if lines and lines[-1] == "":
        lines.pop()
    out = sys.stdout
    for line in lines:
        if line.endswith("\r"):
            line = line[:-1]
        v = json.loads(line)
        if not isinstance(v, str):
            raise SystemExit("not a JSON string: %r" % line)
        out.write(json.dumps(fn(v), ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(encoding="utf-8")
    sys.exit(main(sys.argv))
