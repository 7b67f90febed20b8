// secondreader's viewer: sign in with an API key, the worklist, a study. Routes live in the URL
// fragment (#/worklist, #/study/UID): never the key.
import './style.css';
import { api, clearKey, getKey, setKey, setUnauthorizedHandler } from './api.js';
import { StudyView } from './study.js';
import { Worklist } from './worklist.js';

const views = {
  login: document.getElementById('login-view'),
  worklist: document.getElementById('worklist-view'),
  study: document.getElementById('study-view'),
};
let current = null;
let study = null;
let refreshTimer = null;

function show(name) {
  current = name;
  for (const [key, view] of Object.entries(views)) view.hidden = key !== name;
  const signedIn = name !== 'login';
  document.getElementById('logout').hidden = !signedIn;
  document.getElementById('reviewer-box').hidden = !signedIn;
}

const worklist = new Worklist({ onOpen: (uid) => { window.location.hash = `#/study/${encodeURIComponent(uid)}`; } });

function route() {
  window.clearInterval(refreshTimer);
  if (!getKey()) {
    show('login');
    document.getElementById('api-key').focus();
    return;
  }
  const match = /^#\/study\/([0-9.]+)$/.exec(decodeURIComponent(window.location.hash));
  if (match) {
    show('study');
    if (!study) study = new StudyView();
    study.open(match[1]);
    document.getElementById('viewport').focus();
    return;
  }
  show('worklist');
  worklist.refresh().then(() => worklist.focusFirst());
  refreshTimer = window.setInterval(() => worklist.refresh(), 30000);
}

function signOut(message = '') {
  clearKey();
  document.getElementById('login-error').textContent = message;
  window.location.hash = '';
  route();
}

setUnauthorizedHandler(() => signOut('The API key was refused; sign in again.'));

document.getElementById('login-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const input = document.getElementById('api-key');
  const key = input.value.trim();
  const error = document.getElementById('login-error');
  error.textContent = '';
  if (!key) return;
  try {
    if (!(await api.checkKey(key))) {
      error.textContent = 'This API key was refused.';
      input.select();
      return;
    }
  } catch {
    error.textContent = 'The service cannot be reached.';
    return;
  }
  setKey(key);
  input.value = '';
  if (!window.location.hash) window.location.hash = '#/worklist';
  route();
});

document.getElementById('logout').addEventListener('click', () => signOut());
document.getElementById('back').addEventListener('click', () => { window.location.hash = '#/worklist'; });

document.addEventListener('keydown', (event) => {
  const target = event.target;
  const typing = target instanceof HTMLElement && target.matches('input, select, textarea');
  if (event.key === 'Escape' && current === 'study') {
    window.location.hash = '#/worklist';
    event.preventDefault();
    return;
  }
  if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
  if (current === 'worklist' && (event.key === 'r' || event.key === 'R')) {
    worklist.refresh();
    event.preventDefault();
  } else if (current === 'study' && study) {
    study.onKey(event);
  }
});

window.addEventListener('hashchange', route);
route();
