// The chat page served at / (as llama.cpp's server has one): plain HTML and a little JavaScript, no build step,
// no external resource. It streams /v1/chat/completions with fetch and reads the server-sent events itself
// (EventSource cannot POST). Kept as a string in a module so `tsc` ships it in dist/ with nothing to copy.
// The element ids (#input, #send, #stop, #log, #status, #apikey, #maxtokens) are what test/server-chat-page.test.ts drives.
// Stop aborts the fetch: the server sees the socket close and frees the sequence at once.
export const CHAT_PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>megamoe chat</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; margin: 0; display: flex; flex-direction: column; height: 100vh; }
  header { padding: 8px 14px; background: #1f2937; color: #f9fafb; display: flex; gap: 12px; align-items: center; }
  header input { flex: 0 0 14em; }
  #log { flex: 1; overflow-y: auto; padding: 14px; background: #f3f4f6; }
  .msg { max-width: 52em; margin: 0 0 10px; padding: 8px 12px; border-radius: 8px; white-space: pre-wrap; }
  .user { background: #dbeafe; margin-left: auto; }
  .assistant { background: #fff; border: 1px solid #e5e7eb; }
  .error { background: #fee2e2; }
  form { display: flex; gap: 8px; padding: 10px 14px; border-top: 1px solid #e5e7eb; }
  textarea { flex: 1; resize: vertical; min-height: 2.6em; font: inherit; }
  #status { font-size: 12px; opacity: .8; }
</style>
</head>
<body>
<header><strong>megamoe</strong><span id="model">…</span><span id="status"></span>
  <span style="flex:1"></span><label>max tokens <input id="maxtokens" type="number" min="1" value="512" style="width:5em"></label>
  <input id="apikey" type="password" placeholder="API key (if the server has one)"></header>
<div id="log"></div>
<form id="form">
  <textarea id="input" placeholder="Message (Enter sends, Shift+Enter for a new line)"></textarea>
  <button id="send" type="submit">Send</button>
  <button id="stop" type="button" disabled>Stop</button>
</form>
<script>
(function () {
  var log = document.getElementById('log');
  var input = document.getElementById('input');
  var send = document.getElementById('send');
  var statusEl = document.getElementById('status');
  var keyEl = document.getElementById('apikey');
  var stopBtn = document.getElementById('stop');
  var controller = null;
  stopBtn.addEventListener('click', function () { if (controller) controller.abort(); });
  var history = [];
  var model = null;
  keyEl.value = localStorage.getItem('megamoe-api-key') || '';
  keyEl.addEventListener('change', function () { localStorage.setItem('megamoe-api-key', keyEl.value); loadModel(); });

  function headers() {
    var h = { 'content-type': 'application/json' };
    if (keyEl.value) h.authorization = 'Bearer ' + keyEl.value;
    return h;
  }
  function add(role, text) {
    var div = document.createElement('div');
    div.className = 'msg ' + role;
    div.textContent = text;
    log.appendChild(div);
    log.scrollTop = log.scrollHeight;
    return div;
  }
  function loadModel() {
    return fetch('/v1/models', { headers: headers() }).then(function (r) { return r.json(); }).then(function (j) {
      if (j.data && j.data.length) { model = j.data[0].id; document.getElementById('model').textContent = model; }
      else if (j.error) { statusEl.textContent = j.error.message; }
    });
  }

  async function chat(text) {
    history.push({ role: 'user', content: text });
    add('user', text);
    var out = add('assistant', '');
    out.dataset.state = 'streaming';
    send.disabled = true;
    stopBtn.disabled = false;
    controller = new AbortController();
    var started = performance.now(), first = 0, pieces = 0, answer = '';
    try {
      if (!model) await loadModel();
      var res = await fetch('/v1/chat/completions', {
        method: 'POST', headers: headers(), signal: controller.signal,
        body: JSON.stringify({ model: model, messages: history, stream: true, stream_options: { include_usage: true },
          max_tokens: Math.max(1, parseInt(document.getElementById('maxtokens').value, 10) || 512) }),
      });
      if (!res.ok) {
        var err = await res.json().catch(function () { return { error: { message: res.statusText } }; });
        throw new Error(res.status + ': ' + err.error.message);
      }
      var reader = res.body.getReader();
      var decoder = new TextDecoder();
      var buf = '';
      for (;;) {
        var step = await reader.read();
        if (step.done) break;
        buf += decoder.decode(step.value, { stream: true });
        var cut;
        while ((cut = buf.indexOf('\\n\\n')) >= 0) {
          var event = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          if (event.indexOf('data: ') !== 0) continue;
          var data = event.slice(6);
          if (data === '[DONE]') continue;
          var j = JSON.parse(data);
          if (j.error) throw new Error(j.error.message);
          if (j.usage) statusEl.textContent = j.usage.completion_tokens + ' tokens, first after '
            + Math.round(first - started) + ' ms, ' + ((performance.now() - started) / 1000).toFixed(2) + ' s in all';
          var c = j.choices && j.choices[0];
          if (c && c.delta && c.delta.content) {
            if (!pieces++) first = performance.now();
            answer += c.delta.content;
            out.textContent = answer;
            log.scrollTop = log.scrollHeight;
          }
        }
      }
      history.push({ role: 'assistant', content: answer });
      out.dataset.state = 'done';
    } catch (e) {
      if (e.name === 'AbortError') {
        // Stopped by the user: keep what came, as a finished turn.
        history.push({ role: 'assistant', content: answer });
        out.dataset.state = 'stopped';
        statusEl.textContent = 'stopped after ' + pieces + ' pieces';
        return;
      }
      out.className = 'msg error';
      out.textContent = String(e.message || e);
      out.dataset.state = 'error';
      history.pop();
    } finally {
      controller = null;
      stopBtn.disabled = true;
      send.disabled = false;
      input.focus();
    }
  }

  document.getElementById('form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    var text = input.value.trim();
    if (!text || send.disabled) return;
    input.value = '';
    chat(text);
  });
  input.addEventListener('keydown', function (ev) {
    if (ev.key === 'Enter' && !ev.shiftKey) { ev.preventDefault(); document.getElementById('form').requestSubmit(); }
  });
  loadModel().catch(function (e) { statusEl.textContent = String(e); });
})();
</script>
</body>
</html>
`;
