// Secure-link viewer. The key comes from the URL fragment (after '#'), which the browser never
// sends to the server; the server hands out the ciphertext once, after the one-time code.
// Decryption happens here, with WebCrypto (AES-256-GCM). Nothing is loaded from elsewhere.
// Where the tenant configured OIDC sign-in, the page can instead send the user to the identity
// provider (implicit flow); the ID token comes back in the fragment of this same page, and the
// link key waits in sessionStorage meanwhile (it was in the original fragment).
'use strict';

const AAD = new TextEncoder().encode('sealgate secure link v1');
const MESSAGES = {
  unknown: 'This link does not exist. Check that you opened the whole link.',
  expired: 'This link has expired and its message was deleted. Ask the sender to send it again.',
  used: 'This link was already opened once, and its message was deleted. Ask the sender to send it again if you need it.',
  locked: 'Too many wrong codes were entered. This link is locked and its message was deleted.',
  nokey: 'This link is incomplete: the part after "#" is missing, so the message cannot be decrypted.',
};
const CODES = {
  unknown_link: 'unknown', link_expired: 'expired', link_used: 'used', too_many_attempts: 'locked',
};
const STORE_PREFIX = 'sealgate-link:';

function randomToken() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

// The payload of a JWT, unverified: only to compare the nonce this page made.
function jwtPayload(token) {
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try { return JSON.parse(new TextDecoder().decode(b64urlDecode(parts[1]))); } catch (_) { return null; }
}

const $ = (id) => document.getElementById(id);

function b64urlDecode(s) {
  const b64 = s.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(s.length / 4) * 4, '=');
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function status(text) { $('status').textContent = text; }

function fail(text) {
  const e = $('error');
  e.textContent = text;
  e.hidden = false;
}

function final(state) {
  $('verify').hidden = true;
  $('sign-in').hidden = true;
  status(MESSAGES[state] || 'This link cannot be opened.');
  document.body.dataset.state = state;
}

async function post(path, body) {
  const resp = await fetch(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body || {}),
    credentials: 'omit',
    cache: 'no-store',
  });
  let json = null;
  try { json = await resp.json(); } catch (_) { /* no body */ }
  return { ok: resp.ok, status: resp.status, json };
}

async function decrypt(keyBytes, data) {
  if (data.length < 29 || data[0] !== 1) throw new Error('unknown format');
  const key = await crypto.subtle.importKey('raw', keyBytes, { name: 'AES-GCM' }, false, ['decrypt']);
  const plain = await crypto.subtle.decrypt(
    { name: 'AES-GCM', iv: data.slice(1, 13), additionalData: AAD, tagLength: 128 },
    key, data.slice(13));
  const payload = JSON.parse(new TextDecoder().decode(plain));
  return typeof payload.text === 'string' ? payload.text : '';
}

async function show(keyBytes, r) {
  try {
    const text = await decrypt(keyBytes, b64urlDecode(r.json.ciphertext));
    $('verify').hidden = true;
    $('sign-in').hidden = true;
    $('message').textContent = text;
    $('content').hidden = false;
    status('Decrypted in your browser.');
    document.body.dataset.state = 'opened';
    // Keep the key out of the history and of any later copy of the address.
    history.replaceState(null, '', location.pathname);
  } catch (_) {
    fail('The message could not be decrypted: the link is damaged or incomplete.');
  }
}

// Back from the identity provider: check state and nonce, then trade the ID token.
async function finishSignIn(link, params) {
  const storeKey = STORE_PREFIX + link;
  const saved = (() => {
    try { return JSON.parse(sessionStorage.getItem(storeKey) || 'null'); } catch (_) { return null; }
  })();
  sessionStorage.removeItem(storeKey);
  if (!saved || !saved.k) {
    history.replaceState(null, '', location.pathname);
    return final('nokey');
  }
  // Drop the token from the address; keep the key so the user can try again.
  history.replaceState(null, '', `${location.pathname}#k=${saved.k}`);
  let keyBytes;
  try { keyBytes = b64urlDecode(saved.k); } catch (_) { return final('nokey'); }
  const token = params.get('id_token');
  if (params.get('error') || !token) return fail('Sign-in did not complete. Try again.');
  if (params.get('state') !== saved.state) return fail('Sign-in could not be checked. Try again.');
  const claims = jwtPayload(token);
  if (!claims || claims.nonce !== saved.nonce) return fail('Sign-in could not be checked. Try again.');
  status('Opening…');
  const r = await post(`/l/${link}/open`, { id_token: token });
  if (!r.ok) {
    const c = r.json && r.json.code;
    if (CODES[c]) return final(CODES[c]);
    return fail(c === 'invalid_id_token'
      ? `This account cannot open this message. ${r.json.detail || ''}`
      : 'The message could not be opened. Try again later.');
  }
  return show(keyBytes, r);
}

function startSignIn(link, key) {
  const body = document.body.dataset;
  const state = randomToken();
  const nonce = randomToken();
  sessionStorage.setItem(STORE_PREFIX + link, JSON.stringify({ k: key, state, nonce }));
  const q = new URLSearchParams({
    response_type: 'id_token',
    client_id: body.oidcClient,
    redirect_uri: location.origin + location.pathname,
    scope: 'openid phone',
    response_mode: 'fragment',
    nonce,
    state,
  });
  location.assign(`${body.oidcAuthorize}?${q}`);
}

function main() {
  const link = document.body.dataset.link;
  const state = document.body.dataset.state;
  const params = new URLSearchParams(location.hash.slice(1));
  const oidc = Boolean(document.body.dataset.oidcAuthorize);
  const oidcOnly = oidc && document.body.dataset.oidcRequired === 'true';
  if (state !== 'active') return final(state);
  if (oidc && (params.has('id_token') || params.has('error'))) {
    $('sign-in').hidden = false;
    return finishSignIn(link, params).then(() => wire(link, null, oidc, oidcOnly));
  }
  const key = params.get('k');
  if (!key) return final('nokey');
  let keyBytes;
  try {
    keyBytes = b64urlDecode(key);
    if (keyBytes.length !== 32) throw new Error('length');
  } catch (_) { return final('nokey'); }
  return wire(link, keyBytes, oidc, oidcOnly, key);
}

function wire(link, keyBytes, oidc, oidcOnly, key) {
  if (document.body.dataset.state !== 'active') return;
  if (!key) {
    key = new URLSearchParams(location.hash.slice(1)).get('k');
    if (!key) return;
    try { keyBytes = b64urlDecode(key); } catch (_) { return; }
  }
  status('This message is protected. Verify it is you to open it.');
  if (oidc) {
    $('sign-in').hidden = false;
    $('oidc').addEventListener('click', () => startSignIn(link, key));
  }
  if (oidcOnly) return;
  $('verify').hidden = false;

  $('request-code').addEventListener('click', async () => {
    $('error').hidden = true;
    $('request-code').disabled = true;
    const r = await post(`/l/${link}/otp`);
    if (r.ok) {
      status(`We sent a code to ${r.json.to}. Enter it below.`);
      $('code-entry').hidden = false;
      $('code').focus();
      setTimeout(() => { $('request-code').disabled = false; }, 30000);
      $('request-code').textContent = 'Send a new code';
      return;
    }
    $('request-code').disabled = false;
    const code = r.json && r.json.code;
    if (CODES[code]) return final(CODES[code]);
    fail(code === 'rate_limited' ? 'Please wait a little before asking for another code.'
      : 'The code could not be sent. Try again later.');
  });

  $('open').addEventListener('click', async () => {
    $('error').hidden = true;
    const code = $('code').value.trim();
    if (!/^[0-9]{6}$/.test(code)) return fail('Enter the 6-digit code from the text message.');
    $('open').disabled = true;
    const r = await post(`/l/${link}/open`, { code });
    $('open').disabled = false;
    if (!r.ok) {
      const c = r.json && r.json.code;
      if (CODES[c]) return final(CODES[c]);
      return fail(c === 'invalid_code' ? `Wrong or expired code. ${r.json.detail || ''}`
        : 'The message could not be opened. Try again later.');
    }
    return show(keyBytes, r);
  });
}

main();
