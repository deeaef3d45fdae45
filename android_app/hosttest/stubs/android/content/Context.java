package android.content;

import java.io.File;

public abstract class Context {
    public abstract File getFilesDir();
    public abstract File getExternalFilesDir(String type);
    public final String getString(int resId) { throw new RuntimeException("Stub!"); }
    public final String getString(int resId, Object... formatArgs) { throw new RuntimeException("Stub!"); }
}
