// The index field rules, the same as the gateway's: a value the page lets
// through here is one the gateway accepts, and one refused here the gateway
// would refuse with 422 invalid_metadata. Used by panel.js before a scan is
// sent; IndexFields.check(field, value) answers {ok, rule}.
'use strict';
(function (global) {
  const NUMBER = /^-?[0-9]+(\.[0-9]+)?$/;
  const DATE = /^([0-9]{4})-([0-9]{2})-([0-9]{2})$/;

  function isLeap(year) {
    return (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0;
  }

  // A real calendar date: month 1-12, day within that month.
  function isRealDate(text) {
    const m = DATE.exec(text);
    if (!m) return false;
    const year = Number(m[1]);
    const month = Number(m[2]);
    const day = Number(m[3]);
    if (month < 1 || month > 12 || day < 1) return false;
    const days = [31, isLeap(year) ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    return day <= days[month - 1];
  }

  // The whole value must match: the pattern is anchored at both ends.
  function matchesPattern(pattern, value) {
    let re;
    try {
      re = new RegExp('^(?:' + pattern + ')$', 'u');
    } catch (e) {
      // A pattern this browser cannot read: the gateway alone decides.
      return true;
    }
    return re.test(value);
  }

  function refused(rule) {
    return { ok: false, rule: rule };
  }

  const OK = Object.freeze({ ok: true, rule: null });

  function check(field, value) {
    // Absent or empty is missing: refused when required, and otherwise
    // nothing else is checked.
    if (value === undefined || value === null || value === '') {
      return field.required ? refused('required') : OK;
    }
    switch (field.type) {
      case 'text':
        if (field.pattern !== undefined && field.pattern !== null &&
            !matchesPattern(field.pattern, value)) {
          return refused('pattern');
        }
        return OK;
      case 'number':
        return NUMBER.test(value) ? OK : refused('number');
      case 'date':
        return isRealDate(value) ? OK : refused('date');
      case 'choice':
        return (field.choices || []).indexOf(value) >= 0 ? OK : refused('choice');
      default:
        // A kind this panel does not know: the gateway checks it.
        return OK;
    }
  }

  // The sentence the panel shows under a refused field.
  function explain(field, rule) {
    const name = field.label || field.name;
    switch (rule) {
      case 'required':
        return name + ' is required.';
      case 'pattern':
        return name + ' is not in the expected form.';
      case 'number':
        return name + ' must be a number, like 12 or 3.5.';
      case 'date':
        return name + ' must be a date written YYYY-MM-DD, like 2026-12-01.';
      case 'choice':
        return name + ' must be one of: ' + (field.choices || []).join(', ') + '.';
      default:
        return name + ' is not valid.';
    }
  }

  global.IndexFields = Object.freeze({ check: check, explain: explain });
})(window);
