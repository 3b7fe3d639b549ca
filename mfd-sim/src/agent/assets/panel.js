// The panel's behaviour: log in, choose a workflow, fill its index fields
// (checked here with IndexFields before anything is sent), scan, follow the
// job to its end, log out. The agent keeps the session and talks to the
// servers; this page only calls the agent's /api and shows what it says:
// which server is in use, a notice after a failover or failback, and the
// jobs still waiting in the device's outbox.
'use strict';
(function () {
  const STATUS_POLL_MS = 1000;
  const JOB_POLL_MS = 700;
  const FINAL_STATES = ['done', 'failed', 'rejected'];

  const $ = function (id) { return document.getElementById(id); };
  const panel = {
    user: null,
    catalog: null,
    workflow: null,
    jobId: null,
    jobTimer: null,
    noticeClosed: 0,
    view: null,
  };

  // One call to the agent; a refusal becomes an Error with its sentence.
  async function api(method, path, body) {
    const options = { method: method, headers: { 'Accept': 'application/json' } };
    if (body !== undefined) {
      options.headers['Content-Type'] = 'application/json';
      options.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, options);
    } catch (e) {
      throw new Error('The device agent does not answer.');
    }
    let data = null;
    try {
      data = await response.json();
    } catch (e) {
      data = null;
    }
    if (!response.ok) {
      throw new Error((data && data.error) || 'The device agent answered ' + response.status + '.');
    }
    return data;
  }

  function show(view) {
    panel.view = view;
    for (const id of ['login-view', 'workflows-view', 'fields-view', 'job-view']) {
      $(id).hidden = id !== view;
    }
  }

  function setError(id, text) {
    const el = $(id);
    el.textContent = text || '';
    el.hidden = !text;
  }

  // ----- the bar: server, outbox, user, notice --------------------------

  function renderStatus(status) {
    const server = $('server');
    const role = status.server.role;
    const host = status.server.url.replace(/^[a-z]+:\/\//, '');
    server.textContent = role.charAt(0).toUpperCase() + role.slice(1) + ' server · ' + host;
    server.dataset.role = role;
    server.title = status.server.url;

    const waiting = status.outbox.waiting.length;
    const outbox = $('outbox');
    outbox.hidden = waiting === 0 && status.outbox.rejected === 0;
    let text = waiting === 1 ? '1 job waiting to be sent' : waiting + ' jobs waiting to be sent';
    if (status.outbox.rejected > 0) {
      text += ' · ' + status.outbox.rejected + ' refused';
    }
    outbox.textContent = text;
    outbox.dataset.waiting = String(waiting);

    const notice = status.notice;
    const shown = notice !== null && notice.seq !== panel.noticeClosed;
    $('notice').hidden = !shown;
    $('notice').dataset.kind = shown ? notice.kind : '';
    $('notice-text').textContent = shown ? notice.text : '';
    $('notice').dataset.seq = shown ? String(notice.seq) : '';

    const wasUser = panel.user;
    panel.user = status.user;
    $('user').hidden = !status.user;
    $('user').textContent = status.user ? status.user : '';
    $('logout-button').hidden = !status.user;
    if (!status.user && (wasUser || panel.view === null)) {
      // Logged out here, or the session ended on the device (idle).
      leaveSession();
    } else if (status.user && panel.view === null) {
      openWorkflows();
    }
  }

  async function pollStatus() {
    try {
      renderStatus(await api('GET', '/api/status'));
    } catch (e) {
      $('server').textContent = e.message;
      $('server').dataset.role = '';
    }
    window.setTimeout(pollStatus, STATUS_POLL_MS);
  }

  // ----- log in and out --------------------------------------------------

  function leaveSession() {
    stopJobPolling();
    panel.catalog = null;
    panel.workflow = null;
    panel.jobId = null;
    $('login-password').value = '';
    setError('login-error', '');
    show('login-view');
  }

  async function logIn(event) {
    event.preventDefault();
    const user = $('login-user').value.trim();
    const password = $('login-password').value;
    if (!user || !password) {
      setError('login-error', 'Enter your user name and password.');
      return;
    }
    $('login-button').disabled = true;
    try {
      await api('POST', '/api/login', { user: user, password: password });
      panel.user = user;
      $('login-password').value = '';
      setError('login-error', '');
      await refreshStatus();
      await openWorkflows();
    } catch (e) {
      setError('login-error', e.message);
    } finally {
      $('login-button').disabled = false;
    }
  }

  async function logOut() {
    $('logout-button').disabled = true;
    try {
      await api('POST', '/api/logout');
    } catch (e) {
      // The session has ended on the device whatever the server heard.
    } finally {
      $('logout-button').disabled = false;
    }
    panel.user = null;
    $('login-user').value = '';
    leaveSession();
    await refreshStatus();
  }

  async function refreshStatus() {
    try {
      renderStatus(await api('GET', '/api/status'));
    } catch (e) {
      // The next poll shows it.
    }
  }

  // ----- workflows and index fields -------------------------------------

  async function openWorkflows() {
    show('workflows-view');
    setError('workflows-error', '');
    const list = $('workflow-list');
    list.textContent = '';
    try {
      panel.catalog = await api('GET', '/api/workflows');
    } catch (e) {
      setError('workflows-error', e.message);
      return;
    }
    if (panel.catalog.workflows.length === 0) {
      setError('workflows-error', 'No workflow is configured; ask the administrator.');
    }
    for (const name of panel.catalog.workflows) {
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'workflow';
      button.dataset.workflow = name;
      button.textContent = name;
      button.addEventListener('click', function () { openFields(name); });
      list.appendChild(button);
    }
  }

  function fieldsOf(name) {
    const details = (panel.catalog && panel.catalog.details) || [];
    const entry = details.find(function (d) { return d.name === name; });
    return entry ? entry.fields || [] : [];
  }

  function openFields(name) {
    panel.workflow = name;
    $('fields-title').textContent = name;
    setError('scan-error', '');
    const list = $('field-list');
    list.textContent = '';
    const fields = fieldsOf(name);
    if (fields.length === 0) {
      const p = document.createElement('p');
      p.className = 'hint';
      p.textContent = 'This workflow has no index fields. Put the pages on the scanner and press Scan.';
      list.appendChild(p);
    }
    for (const field of fields) {
      list.appendChild(fieldRow(field));
    }
    show('fields-view');
    const first = list.querySelector('input, select');
    if (first) first.focus();
  }

  function fieldRow(field) {
    const row = document.createElement('div');
    row.className = 'field';
    const label = document.createElement('label');
    const id = 'field-' + field.name;
    label.htmlFor = id;
    label.textContent = (field.label || field.name) + (field.required ? ' *' : '');
    row.appendChild(label);
    let input;
    if (field.type === 'choice') {
      input = document.createElement('select');
      const none = document.createElement('option');
      none.value = '';
      none.textContent = field.required ? 'Choose…' : '(none)';
      input.appendChild(none);
      for (const choice of field.choices || []) {
        const option = document.createElement('option');
        option.value = choice;
        option.textContent = choice;
        input.appendChild(option);
      }
    } else {
      input = document.createElement('input');
      input.type = 'text';
      if (field.type === 'number') input.inputMode = 'decimal';
      if (field.type === 'date') input.placeholder = 'YYYY-MM-DD';
    }
    input.id = id;
    input.name = field.name;
    input.dataset.field = field.name;
    input.setAttribute('aria-describedby', 'error-' + field.name);
    input.addEventListener('input', function () { markField(field, input, null); });
    row.appendChild(input);
    const error = document.createElement('p');
    error.id = 'error-' + field.name;
    error.className = 'field-error';
    error.hidden = true;
    row.appendChild(error);
    return row;
  }

  function markField(field, input, rule) {
    const error = $('error-' + field.name);
    input.setAttribute('aria-invalid', rule ? 'true' : 'false');
    error.dataset.rule = rule || '';
    error.textContent = rule ? IndexFields.explain(field, rule) : '';
    error.hidden = !rule;
  }

  // Checks every field with the gateway's rules; answers the metadata to
  // send, or null when a field is refused (shown under it).
  function collectMetadata() {
    const metadata = {};
    let firstBad = null;
    for (const field of fieldsOf(panel.workflow)) {
      const input = $('field-' + field.name);
      const value = input.value;
      const verdict = IndexFields.check(field, value);
      markField(field, input, verdict.ok ? null : verdict.rule);
      if (!verdict.ok && !firstBad) firstBad = input;
      if (verdict.ok && value !== '') metadata[field.name] = value;
    }
    if (firstBad) {
      firstBad.focus();
      return null;
    }
    return metadata;
  }

  // ----- scanning and the job -------------------------------------------

  async function scan(event) {
    event.preventDefault();
    setError('scan-error', '');
    const metadata = collectMetadata();
    if (metadata === null) return;
    $('scan-button').disabled = true;
    try {
      const answer = await api('POST', '/api/scan', { workflow: panel.workflow, metadata: metadata });
      openJob(answer.job_id);
    } catch (e) {
      setError('scan-error', e.message);
    } finally {
      $('scan-button').disabled = false;
    }
  }

  const STEP_ORDER = ['kept', 'sent', 'processing', 'done'];
  const REACHED = {
    waiting: 'kept',
    acknowledged: 'sent',
    received: 'sent',
    processing: 'processing',
    done: 'done',
    failed: 'processing',
    rejected: 'kept',
  };
  const HEADLINE = {
    waiting: 'Sending…',
    acknowledged: 'Sent',
    received: 'Sent, waiting for processing',
    processing: 'Processing…',
    done: 'Done',
    failed: 'Failed',
    rejected: 'Refused',
  };

  function renderJob(job) {
    const state = job.state;
    $('job-state').dataset.state = state;
    $('job-state').textContent = HEADLINE[state] || state;
    $('job-message').textContent = job.message || '';
    const reached = STEP_ORDER.indexOf(REACHED[state] || 'kept');
    const bad = state === 'failed' || state === 'rejected';
    $('job-steps').querySelectorAll('li').forEach(function (li, i) {
      li.classList.toggle('reached', i <= reached && !(bad && i === reached));
      li.classList.toggle('failed', bad && i === reached + (state === 'rejected' ? 1 : 0));
    });
  }

  function stopJobPolling() {
    if (panel.jobTimer !== null) {
      window.clearTimeout(panel.jobTimer);
      panel.jobTimer = null;
    }
  }

  function openJob(jobId) {
    stopJobPolling();
    panel.jobId = jobId;
    $('job-title').textContent = 'Your scan (' + panel.workflow + ')';
    $('job-view').dataset.job = jobId;
    renderJob({ state: 'waiting', message: 'Kept on the device; sending it to the server.' });
    show('job-view');
    pollJob(jobId);
  }

  async function pollJob(jobId) {
    panel.jobTimer = null;
    if (panel.jobId !== jobId) return;
    let job = null;
    try {
      job = await api('GET', '/api/jobs/' + encodeURIComponent(jobId));
    } catch (e) {
      $('job-message').textContent = e.message;
    }
    if (panel.jobId !== jobId) return;
    if (job) renderJob(job);
    if (!job || FINAL_STATES.indexOf(job.state) < 0) {
      panel.jobTimer = window.setTimeout(function () { pollJob(jobId); }, JOB_POLL_MS);
    }
  }

  function scanAgain() {
    stopJobPolling();
    panel.jobId = null;
    openFields(panel.workflow);
  }

  function otherWorkflow() {
    stopJobPolling();
    panel.jobId = null;
    openWorkflows();
  }

  // ----- start ------------------------------------------------------------

  document.addEventListener('DOMContentLoaded', function () {
    $('login-form').addEventListener('submit', logIn);
    $('logout-button').addEventListener('click', logOut);
    $('fields-form').addEventListener('submit', scan);
    $('back-button').addEventListener('click', otherWorkflow);
    $('again-button').addEventListener('click', scanAgain);
    $('other-button').addEventListener('click', otherWorkflow);
    $('notice-close').addEventListener('click', function () {
      panel.noticeClosed = Number($('notice').dataset.seq || 0);
      $('notice').hidden = true;
    });
    pollStatus();
  });
})();
