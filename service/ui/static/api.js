// Data access: every call goes to the service's /v1 API with the bearer key, if one is set.
// The key lives in sessionStorage: this tab, until it closes; nothing is written anywhere else.

const KEY_NAME = 'selfreward.apiKey';

export class ApiError extends Error {
  constructor(status, type, message, field) {
    super(message);
    this.status = status;
    this.type = type;
    this.field = field;
  }
}

export function hasKey() {
  return sessionStorage.getItem(KEY_NAME) !== null;
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_NAME);
}

let asking = null; // one key dialog at a time, whatever number of calls got a 401

function askKey(message) {
  if (asking) return asking;
  const dialog = document.getElementById('key-dialog');
  const form = document.getElementById('key-form');
  const input = document.getElementById('key-input');
  const error = document.getElementById('key-error');
  error.textContent = message || '';
  error.hidden = !message;
  input.value = '';
  asking = new Promise((resolve) => {
    const submit = (event) => {
      event.preventDefault();
      if (!input.value) return;
      sessionStorage.setItem(KEY_NAME, input.value);
      form.removeEventListener('submit', submit);
      dialog.close();
      resolve();
    };
    form.addEventListener('submit', submit);
  }).finally(() => {
    asking = null;
    document.getElementById('forget-key').hidden = false;
  });
  dialog.showModal();
  input.focus();
  return asking;
}

/** GET a path relative to the page (`v1/...`): JSON, or a Blob with `{ blob: true }`.
 * A 401 asks for the key and retries; other errors raise ApiError with the service's message. */
export async function get(path, { blob = false } = {}) {
  for (;;) {
    const key = sessionStorage.getItem(KEY_NAME);
    const headers = key === null ? {} : { Authorization: `Bearer ${key}` };
    const response = await fetch(path, { headers });
    if (response.status === 401) {
      await askKey(key === null ? null : 'The service refused that key. Try again.');
      continue;
    }
    if (!response.ok) {
      let error = {};
      try {
        error = (await response.json()).error || {};
      } catch {
        // not the service's JSON error shape: keep the status line
      }
      const message = error.message || `${response.status} ${response.statusText}`;
      throw new ApiError(response.status, error.type || 'http_error', message, error.field);
    }
    return blob ? response.blob() : response.json();
  }
}

const dataset = (name) => `v1/datasets/${encodeURIComponent(name)}`;

export const listDatasets = () => get('v1/datasets');

const summaries = new Map(); // url -> { at, promise }: a summary reads the whole dataset
const SUMMARY_TTL_MS = 30000;

/** A dataset's summary (methods, iterations, histograms), reused for 30 s: moving between
 * views and filters should not re-read a large dataset each time. */
export function summary(name, { method = null, bins = 20 } = {}) {
  const query = new URLSearchParams({ bins: String(bins) });
  if (method) query.set('method', method);
  const url = `${dataset(name)}/summary?${query}`;
  const hit = summaries.get(url);
  if (hit && Date.now() - hit.at < SUMMARY_TTL_MS) return hit.promise;
  const promise = get(url);
  promise.catch(() => summaries.delete(url));
  summaries.set(url, { at: Date.now(), promise });
  return promise;
}

export function pairsPage(name, after, limit) {
  const query = new URLSearchParams({ limit: String(limit) });
  if (after) query.set('after', after);
  return get(`${dataset(name)}/pairs?${query}`);
}

const images = new Map(); // image id -> Promise of an object URL (ids are content hashes)

/** An object URL for a stored image, fetched once with the key (an <img src> cannot send it). */
export function imageUrl(id) {
  if (!images.has(id)) {
    const url = get(`v1/images/${encodeURIComponent(id)}`, { blob: true }).then((b) =>
      URL.createObjectURL(b),
    );
    url.catch(() => images.delete(id));
    images.set(id, url);
  }
  return images.get(id);
}
