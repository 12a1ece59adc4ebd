// One tooltip for the whole page: an element registered with `setTip(node, rows)` shows its
// rows (label, value) on hover or keyboard focus. The rows are kept in a WeakMap, not in the
// DOM, and drawn with textContent.

import { el, mount } from './dom.js';

const tips = new WeakMap();

/** Show `rows` ([label, value] pairs, value already formatted) when `node` is hovered. */
export function setTip(node, title, rows) {
  tips.set(node, { title, rows });
  node.classList.add('has-tip');
  if (!node.hasAttribute('tabindex')) node.setAttribute('tabindex', '0');
}

let hideCurrent = () => {};

/** Hide the tooltip (a view is being replaced: its hovered node may be gone). */
export function hideTip() {
  hideCurrent();
}

export function installTooltip(root) {
  const tip = document.getElementById('tooltip');
  let current = null;
  hideCurrent = () => {
    tip.hidden = true;
    current = null;
  };
  const show = (node) => {
    const data = tips.get(node);
    if (!data) return;
    current = node;
    mount(tip,
      data.title ? el('div', { class: 'tip-title', text: data.title }) : null,
      el('table', {}, data.rows.map(([label, value]) =>
        el('tr', {}, el('th', { text: label }), el('td', { text: value })))));
    tip.hidden = false;
    const box = node.getBoundingClientRect();
    const width = tip.offsetWidth;
    const left = Math.min(Math.max(8, box.left), window.innerWidth - width - 8);
    const below = box.bottom + tip.offsetHeight + 8 < window.innerHeight;
    const top = below ? box.bottom + 6 : box.top - tip.offsetHeight - 6;
    tip.style.left = `${left + window.scrollX}px`;
    tip.style.top = `${top + window.scrollY}px`;
  };
  const hide = (node) => {
    if (node === current) {
      tip.hidden = true;
      current = null;
    }
  };
  const target = (event) => event.target.closest && event.target.closest('.has-tip');
  root.addEventListener('mouseover', (e) => { const t = target(e); if (t) show(t); });
  root.addEventListener('mouseout', (e) => {
    const t = target(e);
    if (t && !t.contains(e.relatedTarget)) hide(t);
  });
  root.addEventListener('focusin', (e) => { const t = target(e); if (t) show(t); });
  root.addEventListener('focusout', (e) => { const t = target(e); if (t) hide(t); });
}
