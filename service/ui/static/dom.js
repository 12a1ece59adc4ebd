// DOM helpers. Data only ever enters the page as text nodes or attribute values: the viewer has
// no HTML-parsing sink at all, so a pair's text is shown, never parsed as markup.

/** Create an element: props set attributes (`class`, `text`, `on*` listeners); children are
 * nodes or strings (strings become text nodes). */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  setProps(node, props);
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const SVG_NS = 'http://www.w3.org/2000/svg';

/** An SVG element with attributes (and an optional `text`). */
export function svg(tag, props = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setProps(node, props);
  node.append(...children);
  return node;
}

function setProps(node, props) {
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') node.setAttribute('class', value);
    else if (key === 'text') node.textContent = String(value);
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
}

/** Replace every child of `node`. */
export function mount(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
}

/** A number for people: `–` for none, exponent for the tiny (R_T) and huge. */
export function fmt(x) {
  if (x === null || x === undefined || Number.isNaN(x)) return '–';
  const a = Math.abs(x);
  if (a === 0) return '0';
  if (Number.isInteger(x) && a < 1e5) return String(x); // counts stay counts
  if (a >= 1e5 || a < 1e-3) return x.toExponential(2);
  if (a >= 100) return x.toFixed(1);
  if (a >= 1) return x.toFixed(2);
  return x.toPrecision(3);
}

/** A signed number (margins). */
export function signed(x) {
  return x === null || x === undefined ? '–' : (x > 0 ? '+' : '') + fmt(x);
}

/** `#/path?a=1` <-> ['path', ...] and a URLSearchParams. */
export function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [path, query = ''] = raw.split('?', 2);
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(query) };
}

export function hashFor(parts, params = {}) {
  const path = parts.map(encodeURIComponent).join('/');
  const query = new URLSearchParams(
    Object.entries(params).filter(([, v]) => v !== null && v !== undefined && v !== ''),
  ).toString();
  return `#/${path}${query ? `?${query}` : ''}`;
}
