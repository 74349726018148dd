// The Electron host: one window over the same router the web console uses. Thin on purpose:
// window, preload, IPC wiring, notifications. Everything else lives in src-main/app.
import { app, BrowserWindow, ipcMain, session, type IpcMainInvokeEvent } from 'electron';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { join } from 'node:path';
import { TidemarkApp } from '../../app/app.js';
import { defaultDataDir } from '../../app/data-dir.js';
import { IPC_EVENT_CHANNEL, IPC_REQUEST_CHANNEL } from '../../../src-shared/api/wire.js';
import { CSP } from '../web/security.js';

const here = fileURLToPath(new URL('.', import.meta.url));
const rendererIndex = join(here, '..', 'renderer', 'index.html');
const rendererUrl = pathToFileURL(rendererIndex).href;

let tidemark: TidemarkApp | undefined;
let window: BrowserWindow | undefined;

function createWindow(core: TidemarkApp): BrowserWindow {
  const win = new BrowserWindow({
    width: 1200,
    height: 800,
    title: 'Tidemark',
    show: false,
    webPreferences: {
      preload: join(here, 'preload.cjs'),
      contextIsolation: true,
      sandbox: true,
      nodeIntegration: false,
      webSecurity: true,
      allowRunningInsecureContent: false,
    },
  });
  win.once('ready-to-show', () => win.show());
  // the renderer is local and complete: it never navigates, never opens windows
  win.webContents.on('will-navigate', (e) => e.preventDefault());
  win.webContents.setWindowOpenHandler(() => ({ action: 'deny' }));
  const unsubscribe = core.bus.subscribe((event) => {
    if (!win.isDestroyed()) win.webContents.send(IPC_EVENT_CHANNEL, event);
  });
  win.on('closed', unsubscribe);
  void win.loadFile(rendererIndex);
  return win;
}

/** Only our own renderer page may call the API. */
function trustedSender(event: IpcMainInvokeEvent): boolean {
  return event.senderFrame?.url.split('#')[0] === rendererUrl && event.sender === window?.webContents;
}

async function boot(): Promise<void> {
  await app.whenReady();
  session.defaultSession.webRequest.onHeadersReceived((details, callback) => {
    callback({ responseHeaders: { ...details.responseHeaders, 'Content-Security-Policy': [CSP] } });
  });
  session.defaultSession.setPermissionRequestHandler((_wc, permission, callback) => callback(permission === 'notifications'));
  const dataDir = defaultDataDir();
  tidemark = await TidemarkApp.start({ dataDir, host: 'electron', log: (m) => console.error(m), nbdSocket: join(dataDir, 'nbd.sock') });
  const core = tidemark;
  ipcMain.handle(IPC_REQUEST_CHANNEL, async (event, envelope: unknown) => {
    if (!trustedSender(event)) return { type: 'response', id: 0, ok: false, error: { code: 'UNAUTHORIZED', message: 'Request from an unknown page refused.' } };
    return core.router.handle(envelope);
  });
  window = createWindow(core);
  app.on('activate', () => {
    if (BrowserWindow.getAllWindows().length === 0) window = createWindow(core);
  });
}

app.on('window-all-closed', () => {
  if (process.platform !== 'darwin') app.quit();
});

let closing = false;
app.on('before-quit', (e) => {
  if (!tidemark || closing) return;
  // flush and close every image before the process goes
  e.preventDefault();
  closing = true;
  void tidemark.close().finally(() => app.quit());
});

boot().catch((err: unknown) => {
  console.error(`Tidemark could not start: ${err instanceof Error ? err.message : String(err)}`);
  app.exit(1);
});
