"""The page at `GET /`: a title box, an image picker with a preview, a submit button; it shows the
decision, a bar per class, and any error.

Self-contained (no CDN, no web fonts, no external request of any kind), and everything it shows is
set with `textContent`, never parsed as HTML, so a hostile title or error message stays text. The
Content-Security-Policy allows only this page's own script and style (by hash) and requests to this
server.
"""

import base64
import hashlib

STYLE = """
body { font: 16px/1.4 system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
h1 { font-size: 1.4rem; } label { display: block; margin: .8rem 0 .2rem; font-weight: 600; }
input[type=text], input[type=password] { width: 100%; padding: .4rem; box-sizing: border-box; }
button { margin-top: 1rem; padding: .5rem 1.4rem; font-size: 1rem; }
#preview[hidden] { display: none; }
#preview { display: block; max-width: 12rem; max-height: 12rem; margin-top: .5rem; border: 1px solid #ccc; }
#decision { font-size: 1.3rem; font-weight: 700; margin-top: 1.2rem; }
.bar { display: grid; grid-template-columns: 6rem 1fr 4rem; gap: .5rem; align-items: center; margin: .3rem 0; }
.track { background: #eee; height: 1rem; } .fill { display: block; background: #3768c8; height: 100%; }
#error { color: #b00020; margin-top: 1rem; white-space: pre-wrap; } #about { color: #666; font-size: .9rem; }
"""

SCRIPT = """
const $ = (id) => document.getElementById(id);
$('image').addEventListener('change', () => {
  const file = $('image').files[0];
  $('preview').hidden = !file;
  if (file) { $('preview').src = URL.createObjectURL(file); }
});
function headers() { return $('token').value ? {Authorization: 'Bearer ' + $('token').value} : {}; }
function show(prediction) {
  $('decision').textContent = prediction.pred_name
    ? prediction.pred_name + ' (' + prediction.status + ')' : 'not scored: ' + prediction.status;
  $('decision').dataset.pred = prediction.pred_name || '';
  for (const [name, p] of Object.entries(prediction.probs || {})) {
    const row = document.createElement('div'), label = document.createElement('span');
    const track = document.createElement('span'), fill = document.createElement('span');
    const value = document.createElement('span');
    row.className = 'bar'; track.className = 'track'; fill.className = 'fill';
    label.textContent = name; value.textContent = (100 * p).toFixed(1) + '%';
    fill.style.width = (100 * p).toFixed(1) + '%';
    track.append(fill); row.append(label, track, value); $('bars').append(row);
  }
}
$('post').addEventListener('submit', async (event) => {
  event.preventDefault();
  $('error').textContent = ''; $('decision').textContent = '...'; $('bars').replaceChildren();
  const body = new FormData();
  body.append('title', $('title').value);
  if ($('image').files[0]) { body.append('image', $('image').files[0]); }
  try {
    const response = await fetch('/v1/predict/form', {method: 'POST', body, headers: headers()});
    const answer = await response.json().catch(() => ({error: response.statusText}));
    if (!response.ok) { throw new Error(response.status + ': ' + (answer.error || response.statusText)); }
    show(answer.predictions[0]);
  } catch (error) {
    $('decision').textContent = '';
    $('error').textContent = String(error.message || error);
  }
});
fetch('/v1/model', {headers: headers()}).then((r) => r.ok ? r.json() : null).then((model) => {
  if (model) { $('about').textContent = 'Run: ' + model.run + '; classes: ' + model.classes.join(', '); }
}).catch(() => {});
"""

PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>mmcache: try a post</title><style>{STYLE}</style></head>
<body><h1>Try a post</h1><p id="about"></p>
<form id="post">
<label for="title">Title</label><input type="text" id="title" name="title" autocomplete="off">
<label for="image">Image</label><input type="file" id="image" name="image" accept="image/*">
<img id="preview" alt="preview of the chosen image" hidden>
<label for="token">Token (only if the server requires one)</label><input type="password" id="token">
<button type="submit" id="submit">Classify</button>
</form>
<div id="decision" role="status"></div><div id="bars"></div><div id="error" role="alert"></div>
<script>{SCRIPT}</script></body></html>
"""


def _hash(text):
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# Only this page's own script and style run; it may talk to this server and show chosen files (blob:).
PAGE_POLICY = (f"default-src 'none'; script-src {_hash(SCRIPT)}; style-src {_hash(STYLE)}; img-src blob:; "
               "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")
